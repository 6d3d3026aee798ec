"""Human walking kinematics: the Boulic-Thalmann global walking model (Boulic et al., The Visual Computer 1990),
as used by V. C. Chen, "The Micro-Doppler Effect in Radar" (2011, ch. 4). numpy only.

Notation (Boulic's):
    H     body height (m);  Ht = (upper leg + lower leg) = 0.491 H, hip height
    RV    relative velocity V / Ht (1/s), valid 0 < RV <= 3
    t     normalised time in one gait cycle, [0, 1); right heel strike at t = 0, the left side runs at t + 1/2
    Dc    cycle (stride = two steps) duration = 1.346 / sqrt(RV) s; stride length RLc Ht = 1.346 sqrt(RV) Ht
    Ds    support duration = 0.752 Dc - 0.143 s;  dsmod = Ds / Dc
Body frame: x forward, y to the walker's left, z up, metres; the spine base (pelvis) is the origin Os.
Joint angles are in degrees: hip flexion + = thigh forward, knee flexion + = shank back (0 = straight),
ankle + = toe up (dorsiflexion), shoulder + = arm forward, elbow flexion + = forearm forward.

Quirks of public copies that this file does NOT reproduce: the body advances RLc * Ht per cycle (not RLc),
the pelvis roll amplitude is 1.66 RV degrees (not 0.01 RV), each limb uses its own length, and elbow
regime c uses RV - 1.3 (not RV - .13).
"""

import numpy as np

# Segment lengths as fractions of H (Boulic / Chen).
HEAD, SHOULDER, TORSO, HIP = 0.130, 0.259 / 2, 0.288, 0.191 / 2
UPPER_LEG, LOWER_LEG, FOOT, UPPER_ARM, LOWER_ARM = 0.245, 0.246, 0.143, 0.188, 0.152

POINTS = ("base", "neck", "head", "r_shoulder", "r_elbow", "r_hand", "l_shoulder", "l_elbow", "l_hand",
          "r_hip", "r_knee", "r_ankle", "r_toe", "l_hip", "l_knee", "l_ankle", "l_toe")  # the 17 body points
P = {name: k for k, name in enumerate(POINTS)}


def cycle_duration(RV):
    """Dc = RLc / RV = 1.346 / sqrt(RV) seconds per gait cycle (two steps)."""
    return 1.346 / np.sqrt(RV)


def pchip(xk, yk, x):
    """Shape-preserving piecewise cubic Hermite interpolation (Fritsch & Carlson 1980) of (xk, yk) at x."""
    h = np.diff(xk)  # (K-1,)
    delta = np.diff(yk) / h  # secant slopes
    d = np.zeros_like(yk)  # slopes at the knots: weighted harmonic mean of neighbouring secants, 0 at extrema
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same_sign = delta[:-1] * delta[1:] > 0
    d[1:-1] = np.where(same_sign, (w1 + w2) / (w1 / np.where(same_sign, delta[:-1], 1)
                                                 + w2 / np.where(same_sign, delta[1:], 1)), 0.0)
    d[0], d[-1] = delta[0], delta[-1]  # ends lie a full cycle outside [0, 1), so their rule does not matter
    i = np.clip(np.searchsorted(xk, x) - 1, 0, len(h) - 1)
    s = (x - xk[i]) / h[i]  # position inside the interval, [0, 1]
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    return h00 * yk[i] + h10 * h[i] * d[i] + h01 * yk[i + 1] + h11 * h[i] * d[i + 1]


def periodic_curve(points, t):
    """PCHIP through control points (x, y), copied at x - 1 and x + 1 so the curve is 1-periodic in t."""
    xy = np.array(sorted((round(x + shift, 12), y) for x, y in points for shift in (-1, 0, 1)))
    xy = xy[np.concatenate([[True], np.diff(xy[:, 0]) > 0])]  # Boulic lists x = -0.1 and 0.9: the same phase
    return pchip(xy[:, 0], xy[:, 1], np.mod(t, 1.0))


def regime(RV):
    """Boulic's three gait regimes: 'a' RV < 0.5, 'b' 0.5 <= RV < 1.3, 'c' 1.3 <= RV <= 3."""
    if not 0 < RV <= 3:
        raise ValueError(f"relative velocity RV = V / Ht = {RV:.2f} is outside the model's (0, 3]; "
                         f"lower the walking speed or raise the height")
    return "a" if RV < 0.5 else "b" if RV < 1.3 else "c"


def joint_curves(RV, t):
    """Hip, knee, ankle, elbow flexion and shoulder angle (degrees) at normalised times t (any shape)."""
    g, r, q = regime(RV), (RV - 1.3) / 1.7, (RV - 0.5) / 0.8
    dsmod = (0.752 * cycle_duration(RV) - 0.143) / cycle_duration(RV)  # Ds / Dc
    hip = {"a": [(-0.1, 50 * RV), (0.5, -30 * RV), (0.9, 50 * RV)],
           "b": [(-0.1, 25), (0.5, -15), (0.9, 25)],
           "c": [(0.2 * r - 0.1, 5 * r + 25), (0.5, -15), (0.9, 6 * r + 25)]}[g]
    knee = {"a": [(0.17, 3), (0.4, 3), (0.75, 140 * RV), (1, 3)],
            "b": [(0.17, 3), (0.4, 3), (0.75, 70), (1, 3)],
            "c": [(0.17 - 0.05 * r, 22 * r + 3), (0.4, 3), (0.75 - 0.05 * r, 70 - 5 * r), (1 - 0.03 * r, 3 * r + 3)]}[g]
    ankle = {"a": [(0, -3), (0.08, -30 * RV - 3), (0.5, 22 * RV - 3), (dsmod, -34 * RV - 3), (0.85, -3)],
             "b": [(0, -3), (0.08, -18), (0.5, 8), (dsmod, -20), (0.85, -3)],
             "c": [(0, 5 * r - 3), (0.08, 4 * r - 18), (0.5 - 0.1 * r, 8 - 3 * r), (dsmod, -8 * r - 20),
                   (0.85, 5 * r - 3)]}[g]
    elbow = {"a": [(0.05, 6 * RV + 3), (0.5, 34 * RV + 3), (0.9, 10 * RV + 3)],
             "b": [(0.05, 8 * q + 6), (0.01 * q + 0.5, 24 * q + 20), (0.9, 9 * q + 8)],
             "c": [(0.05, 14 - 6 * r), (0.51 + 0.04 * r, 26 * r + 44), (0.9 - 0.1 * r, 17 - 6 * r)]}[g]
    a_s = 9.88 * RV  # arm swing amplitude
    shoulder = 3 - a_s / 2 - a_s * np.cos(2 * np.pi * t)
    curves = {name: periodic_curve(pts, t) for name, pts in
              (("hip", hip), ("knee", knee), ("ankle", ankle), ("elbow", elbow))}
    return {**curves, "shoulder": shoulder}


def trunk_motion(RV, t):
    """Translations of Os (m) and pelvis/thorax rotations (degrees) at normalised times t (Boulic 1990)."""
    g, dsmod = regime(RV), (0.752 * cycle_duration(RV) - 0.143) / cycle_duration(RV)
    a_v = 0.015 * RV
    a_l = -0.128 * RV**2 + 0.128 * RV if g == "a" else -0.032
    a_a = -0.084 * RV**2 + 0.084 * RV if g == "a" else -0.021
    a1 = -8 * RV**2 + 8 * RV if g == "a" else 2.0
    a2, a3 = 1.66 * RV, 4 * RV
    roll = np.select([t < 0.15, t < 0.5, t < 0.65],
                     [-a2 + a2 * np.cos(2 * np.pi * 10 * t / 3), -a2 - a2 * np.cos(2 * np.pi * 10 * (t - 0.15) / 7),
                      a2 - a2 * np.cos(2 * np.pi * 10 * (t - 0.5) / 3)],
                     a2 + a2 * np.cos(2 * np.pi * 10 * (t - 0.65) / 7))
    return {
        "vertical": -a_v + a_v * np.sin(2 * np.pi * (2 * t - 0.35)),  # two bounces per cycle
        "lateral": a_l * np.sin(2 * np.pi * (t - 0.1)),
        "fore_aft": a_a * np.sin(2 * np.pi * (2 * t + 2 * (0.625 - dsmod))),
        "pitch": -a1 + a1 * np.sin(2 * np.pi * (2 * t - 0.1)),  # forward/backward rotation
        "roll": roll,  # left/right
        "yaw": -a3 * np.cos(2 * np.pi * t),  # pelvis torsion
        "thorax_yaw": periodic_curve([(0.1, 4 * RV / 3), (0.4, -4.5 * RV / 3), (0.6, -4 * RV / 3),
                                      (0.9, 4.5 * RV / 3)], t),
    }


def rotation(roll, pitch, yaw):
    """R = Rz(yaw) Ry(pitch) Rx(roll) for angle arrays (N,) in degrees -> (N, 3, 3)."""
    a, b, c = np.radians(roll), np.radians(pitch), np.radians(yaw)
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    return np.stack([np.stack([cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa], -1),
                     np.stack([sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa], -1),
                     np.stack([-sb, cb * sa, cb * ca], -1)], -2)


def sagittal(angle, length):
    """Segment vector hanging from its joint at `angle` degrees forward of straight down: (N, 3)."""
    a = np.radians(angle)
    return length * np.stack([np.sin(a), np.zeros_like(a), -np.cos(a)], -1)


def walk(time, H=1.8, RV=1.0, phase0=0.0, cadence=1.0, hip_gain=1.0, knee_gain=1.0, arm_gain=1.0, asymmetry=0.0):
    """Positions of the 17 body points, (N, 17, 3) in the body frame, at times `time` (N,) seconds.

    The walker advances along +x at V = RV Ht m/s. Personal factors on top of Boulic's average walker:
    cadence    scales the cycle duration, Dc = cadence * 1.346 / sqrt(RV), decoupling step rate from speed
               (the stride becomes V Dc, so the foot slides by (cadence - 1) of a stride in stance; keep it near 1)
    hip_gain, knee_gain, arm_gain   scale the hip swing about its mean, the knee flexion, the arm swing
    asymmetry  right limbs swing (1 + asymmetry/2) times, left limbs (1 - asymmetry/2) times their amplitude
    """
    Ht = (UPPER_LEG + LOWER_LEG) * H
    V, Dc = RV * Ht, cadence * cycle_duration(RV)
    t = np.mod(phase0 + time / Dc, 1.0)  # (N,) normalised cycle time of the right side
    trunk = trunk_motion(RV, t)

    # 1. Spine origin Os: forward ramp plus Boulic's oscillations.
    base = np.stack([V * time + trunk["fore_aft"], trunk["lateral"], Ht + trunk["vertical"]], -1)  # (N, 3)
    R_pelvis = rotation(trunk["roll"], trunk["pitch"], trunk["yaw"])  # (N, 3, 3)
    R_thorax = rotation(np.zeros_like(t), trunk["pitch"], trunk["thorax_yaw"])  # (N, 3, 3)
    up = np.array([0.0, 0.0, 1.0])
    neck = base + R_thorax @ (TORSO * H * up)  # (N, 3)
    head = neck + R_thorax @ (HEAD * H * up)
    pts = {"base": base, "neck": neck, "head": head}

    for side, sign, half in (("r", -1.0, 0.0), ("l", 1.0, 0.5)):
        gain = 1 + asymmetry / 2 if side == "r" else 1 - asymmetry / 2
        j = joint_curves(RV, np.mod(t + half, 1.0))
        j_mean = joint_curves(RV, np.linspace(0, 1, 64, endpoint=False))
        hip = j_mean["hip"].mean() + hip_gain * gain * (j["hip"] - j_mean["hip"].mean())
        knee, shoulder = knee_gain * gain * j["knee"], arm_gain * gain * j["shoulder"]

        # 2. Leg: thigh at the hip angle, shank bent back by the knee, foot at right angles to the shank
        #    tilted toe-up by the ankle angle; the chain hangs from the pelvis and turns with it.
        thigh, shank = hip, hip - knee  # degrees forward of straight down
        foot = np.radians(shank + j["ankle"])  # foot angle above the horizontal
        hip_pt = base + R_pelvis @ (sign * HIP * H * np.array([0.0, 1.0, 0.0]))
        knee_pt = hip_pt + (R_pelvis @ sagittal(thigh, UPPER_LEG * H)[..., None])[..., 0]
        ankle_pt = knee_pt + (R_pelvis @ sagittal(shank, LOWER_LEG * H)[..., None])[..., 0]
        toe_vec = FOOT * H * np.stack([np.cos(foot), np.zeros_like(foot), np.sin(foot)], -1)
        toe_pt = ankle_pt + (R_pelvis @ toe_vec[..., None])[..., 0]

        # 3. Arm: upper arm at the shoulder angle, forearm flexed forward by the elbow; turns with the thorax.
        sh_pt = neck + R_thorax @ (sign * SHOULDER * H * np.array([0.0, 1.0, 0.0]))
        el_pt = sh_pt + (R_thorax @ sagittal(shoulder, UPPER_ARM * H)[..., None])[..., 0]
        hand_pt = el_pt + (R_thorax @ sagittal(shoulder + j["elbow"], LOWER_ARM * H)[..., None])[..., 0]
        pts.update({f"{side}_hip": hip_pt, f"{side}_knee": knee_pt, f"{side}_ankle": ankle_pt, f"{side}_toe": toe_pt,
                    f"{side}_shoulder": sh_pt, f"{side}_elbow": el_pt, f"{side}_hand": hand_pt})
    return np.stack([pts[name] for name in POINTS], 1)  # (N, 17, 3)
