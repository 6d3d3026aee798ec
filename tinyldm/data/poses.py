"""Activity kinematics: walking.py's 17-point skeleton posed by a few joint angles, and six activities as
key-frame moves. numpy only.

The body stands on its ankles: both stay at z = 0, one hip width apart (the feet never slide), and the chain
rises from them. Body frame as in walking.py: x forward, y to the person's left, z up, metres; segment lengths
are walking.py's fractions of the height H.

    ankle -shank-> knee -thigh-> hip -pelvis-> base -trunk-> neck -head-> head;   ankle -foot-> toe (flat)
    neck -shoulder-> shoulder -upper arm-> elbow -forearm-> hand

Joint angles q (degrees), all in the sagittal plane, both legs alike:
    shank             shank forward of vertical (+ = knee ahead of the ankle; 90 = lying)
    thigh             thigh forward of straight down from the hip (+ = knee ahead of the hip; 90 = seated, -90 = lying)
    trunk             trunk forward of vertical (90 = lying prone)
    neck              head forward of the trunk's line (+ = chin down)
    r_arm, l_arm      upper arm forward of straight down, in the world frame (arms hang by gravity when the trunk leans)
    r_elbow, l_elbow  forearm flexion forward of the upper arm

An activity is a start pose and a list of moves. A move takes one joint from where its previous move left it to
a target angle along a minimum-jerk profile (Flash & Hogan, J. Neurosci. 5(7), 1985):

    q(t) = q_from + (q_target - q_from) s(tau),   s(tau) = 10 tau^3 - 15 tau^4 + 6 tau^5,   tau = (t - t0) / d in [0, 1]

which leaves and arrives at rest. A fall uses s(tau) = 4 tau^3 - 3 tau^4 instead: also at rest at both ends, but
its speed peaks late (tau = 2/3), as a toppling body gathers speed until it lands.
"""

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from tinyldm.data.walking import (
    FOOT,
    HEAD,
    HIP,
    LOWER_ARM,
    LOWER_LEG,
    POINTS,
    SHOULDER,
    TORSO,
    UPPER_ARM,
    UPPER_LEG,
    sagittal,
)

JOINTS = ("shank", "thigh", "trunk", "neck", "r_arm", "r_elbow", "l_arm", "l_elbow")
ARMS = ("r_arm", "r_elbow", "l_arm", "l_elbow")
STANDING = {"shank": 0.0, "thigh": 0.0, "trunk": 0.0, "neck": 0.0, "r_arm": 0.0, "r_elbow": 10.0, "l_arm": 0.0,
            "l_elbow": 10.0}
SEATED = {**STANDING, "shank": 5.0, "thigh": 90.0, "trunk": 5.0,  # seat at LOWER_LEG H cos 5 deg = 0.44 m for 1.8 m
          "r_arm": 25.0, "r_elbow": 45.0, "l_arm": 25.0, "l_elbow": 45.0}  # hands in the lap


def minimum_jerk(tau):
    """s(tau) = 10 tau^3 - 15 tau^4 + 6 tau^5: 0 -> 1 with zero speed and acceleration at both ends."""
    return tau**3 * (10 - 15 * tau + 6 * tau**2)


def late_peak(tau):
    """s(tau) = 4 tau^3 - 3 tau^4: 0 -> 1 at rest at both ends; speed s' = 12 tau^2 (1 - tau) peaks at tau = 2/3."""
    return tau**3 * (4 - 3 * tau)


class Move(NamedTuple):
    joint: str  # one of JOINTS
    t0: float  # start, s after the event's onset
    d: float  # duration, s
    target: float  # angle at t0 + d, degrees
    profile: Callable = minimum_jerk


@dataclass
class Event:
    """One occurrence of an activity; the factors vary the nominal script from one recording to the next."""

    activity: str  # one of ACTIVITIES
    speed: float  # durations are divided by it (0.6-1.5)
    amplitude: float  # joint excursions are multiplied by it (0.6-1.2)
    hold_s: float  # pause at the turning point: hand at the floor (bend_pick_up), cup at the mouth (drink) (0.3-1.2)
    wave_hz: float  # forearm swings back and forth per second while waving (1.5-2.5)
    wave_cycles: int  # back-and-forth swings while waving (1-3)
    side: str  # "r" or "l": the arm that waves, drinks or picks up
    backward: bool  # a fall backwards (else forwards)
    squat: float  # how bend_pick_up bends: 0 at the hips (stoop) ... 1 at the knees (squat)


def fall(e):
    """Standing -> lying, in about 1.5 s: forward (knees buckle, arms thrown forward, prone) or backward (hips
    drop behind the heels as in sitting down, but faster and to the floor, then the trunk topples back)."""
    d, a = 1.5 / e.speed, e.amplitude
    if e.backward:
        return STANDING, [
            Move("shank", 0.0, 0.5 * d, 35.0 * a, late_peak), Move("thigh", 0.0, 0.5 * d, 100.0, late_peak),
            Move("trunk", 0.0, 0.4 * d, 20.0 * a), Move("trunk", 0.4 * d, 0.6 * d, -85.0, late_peak),
            Move("neck", 0.4 * d, 0.6 * d, 30.0),  # chin tucked
            *[Move(j, 0.2 * d, 0.6 * d, 30.0 if j.endswith("elbow") else -40.0) for j in ARMS]]  # hands behind
    return STANDING, [
        Move("shank", 0.0, d, 90.0, late_peak), Move("trunk", 0.1 * d, 0.9 * d, 90.0, late_peak),
        Move("thigh", 0.0, 0.35 * d, 25.0 * a), Move("thigh", 0.35 * d, 0.65 * d, -90.0, late_peak),
        Move("neck", 0.3 * d, 0.7 * d, -30.0),  # the head lifts as the face nears the floor
        *[Move(j, 0.15 * d, 0.6 * d, 20.0 if j.endswith("elbow") else 90.0) for j in ARMS]]  # arms forward


def sit_down(e):
    """Standing -> lean forward, hips back and down onto a seat -> seated, in about 1.8 s."""
    d, a = 1.8 / e.speed, e.amplitude
    return STANDING, [
        Move("trunk", 0.0, 0.45 * d, 40.0 * a), Move("trunk", 0.45 * d, 0.55 * d, SEATED["trunk"]),  # lean, sit back
        Move("shank", 0.05 * d, 0.5 * d, 15.0 * a), Move("shank", 0.55 * d, 0.45 * d, SEATED["shank"]),  # knees forward
        Move("thigh", 0.1 * d, 0.8 * d, SEATED["thigh"]),  # hips back and down onto the seat
        *[Move(j, 0.3 * d, 0.7 * d, SEATED[j]) for j in ARMS]]  # hands to the lap


def stand_up(e):
    """Seated -> lean forward, push up off the seat -> standing, in about 1.9 s."""
    d, a = 1.9 / e.speed, e.amplitude
    return SEATED, [
        Move("trunk", 0.0, 0.4 * d, 45.0 * a), Move("trunk", 0.4 * d, 0.6 * d, 0.0),  # nose over the toes, upright
        Move("shank", 0.0, 0.4 * d, 15.0 * a), Move("shank", 0.4 * d, 0.6 * d, 0.0),
        Move("thigh", 0.3 * d, 0.6 * d, 0.0),  # hips forward and up off the seat
        *[Move(j, 0.2 * d, 0.6 * d, STANDING[j]) for j in ARMS]]


def bend_pick_up(e):
    """Standing -> bend down, one hand to the floor -> hold -> upright, 1.1 s each way. squat 0 bends at the hips
    (stoop), squat 1 at the knees, hips back and down nearly as low as a seat."""
    d, a, sq = 1.1 / e.speed, e.amplitude, e.squat
    bent = {"trunk": (75.0 - 35.0 * sq) * a, "shank": (15.0 + 15.0 * sq) * a, "thigh": (30.0 + 55.0 * sq) * a,
            f"{e.side}_arm": 20.0, f"{e.side}_elbow": 0.0}
    return STANDING, [m for j, target in bent.items()
                      for m in (Move(j, 0.0, d, target), Move(j, d + e.hold_s, d, STANDING[j]))]


def wave(e):
    """Raise one arm to shoulder height, forearm up; swing the forearm back and forth wave_cycles times; lower."""
    d, a, half = 0.8 / e.speed, e.amplitude, 0.5 / e.wave_hz  # raise/lower, one swing (s)
    arm, elbow = f"{e.side}_arm", f"{e.side}_elbow"
    swings = [Move(elbow, d + k * half, half, 90.0 + (-25.0 if k % 2 else 25.0) * a) for k in range(2 * e.wave_cycles)]
    end = d + 2 * e.wave_cycles * half
    return STANDING, [Move(arm, 0.0, d, 70.0 + 30.0 * a), Move(elbow, 0.0, d, 90.0), *swings,
                      Move(arm, end, d, STANDING[arm]), Move(elbow, end, d, STANDING[elbow])]


def drink(e):
    """Raise a cup to the mouth while tipping the head back, hold, lower it; about 1 s each way."""
    d, a = 1.0 / e.speed, e.amplitude
    lifted = {f"{e.side}_arm": 40.0 * a, f"{e.side}_elbow": 125.0, "neck": -20.0 * a}
    return STANDING, [m for j, target in lifted.items()
                      for m in (Move(j, 0.0, d, target), Move(j, d + e.hold_s, d, STANDING[j]))]


ACTIVITIES = {"fall": fall, "sit_down": sit_down, "stand_up": stand_up, "bend_pick_up": bend_pick_up,
              "wave": wave, "drink": drink}  # name: script(Event) -> (start pose, moves)


def script(event):
    """(start pose, moves) of an Event; move times are seconds after its onset."""
    if event.activity not in ACTIVITIES:
        raise ValueError(f"unknown activity {event.activity!r}; choose one of {', '.join(ACTIVITIES)}")
    return ACTIVITIES[event.activity](event)


def event_duration(event):
    """Seconds from the onset until the last move ends."""
    return max(m.t0 + m.d for m in script(event)[1])


def joint_angles(start, moves, t):
    """q: every joint's angle (N,) in degrees at times t (N,) s after the onset.

    Each move adds (target - the joint's previous target) s((t - t0) / d); a joint's moves must be listed in
    time order and not overlap.
    """
    q = {j: np.full(t.shape, float(start[j])) for j in JOINTS}
    last = dict(start)
    for m in moves:
        tau = np.clip((t - m.t0) / m.d, 0.0, 1.0)
        q[m.joint] = q[m.joint] + (m.target - last[m.joint]) * m.profile(tau)
        last[m.joint] = m.target
    return q


def bump(t, t0, d, hold):
    """0 -> 1 over [t0, t0 + d], held for `hold` s, back to 0 over the next d s (two minimum-jerk moves): (N,)."""
    return minimum_jerk(np.clip((t - t0) / d, 0.0, 1.0)) - minimum_jerk(np.clip((t - t0 - d - hold) / d, 0.0, 1.0))


def up(angle, length):
    """Segment vector rising from its joint at `angle` degrees forward of straight up: (N, 3)."""
    a = np.radians(angle)
    return length * np.stack([np.sin(a), np.zeros_like(a), np.cos(a)], -1)


def pose_points(q, H):
    """Forward kinematics: joint angles q (dict of (N,) degrees), height H -> the 17 points (N, 17, 3), body frame."""
    n, pts = len(q["trunk"]), {}
    for side, sign in (("r", -1.0), ("l", 1.0)):
        # 1. Legs: from the planted ankle up through the knee to the hip.
        ankle = np.zeros((n, 3)) + [0.0, sign * HIP * H, 0.0]  # (N, 3)
        knee = ankle + up(q["shank"], LOWER_LEG * H)
        hip = knee - sagittal(q["thigh"], UPPER_LEG * H)  # the thigh hangs from the hip down to the knee
        pts.update({f"{side}_ankle": ankle, f"{side}_toe": ankle + [FOOT * H, 0.0, 0.0], f"{side}_knee": knee,
                    f"{side}_hip": hip})
    # 2. Trunk and head from the spine base, midway between the hips.
    base = (pts["r_hip"] + pts["l_hip"]) / 2  # (N, 3)
    neck = base + up(q["trunk"], TORSO * H)
    pts.update(base=base, neck=neck, head=neck + up(q["trunk"] + q["neck"], HEAD * H))
    # 3. Arms from the shoulders, which sit on either side of the neck.
    for side, sign in (("r", -1.0), ("l", 1.0)):
        shoulder = neck + [0.0, sign * SHOULDER * H, 0.0]
        elbow = shoulder + sagittal(q[f"{side}_arm"], UPPER_ARM * H)
        hand = elbow + sagittal(q[f"{side}_arm"] + q[f"{side}_elbow"], LOWER_ARM * H)
        pts.update({f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_hand": hand})
    return np.stack([pts[name] for name in POINTS], 1)  # (N, 17, 3)
