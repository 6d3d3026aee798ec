"""Finding a data set's images: a folder of user folders, or a CSV of `path,user` rows -> {user name: image paths}.

    root/
      alice/ 000.png 001.png ...      ->  user alice
      bob/   000.png ...              ->  user bob

Every trap of a layout is named at start-up, never silent: a user folder holding only sub-folders (root/site/user
read as one user per site) gets a notice naming the sub-folders; a hidden folder (`.name`) with images and a
broken link are named in a notice; one image under two users is a DataError. CSV paths are relative to the CSV's
folder; a path that exists only relative to the working directory is refused with the path to write instead.
"""

import csv
import os
from pathlib import Path

from tinyldm.data.errors import DataError, notice

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
KINDS_IN_WORDS = "PNG/JPEG/BMP/TIFF/NPY"
MAX_NAMED = 3  # folders or links named one by one in a notice; the rest are counted


def is_image(path):
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def scan_folder(root):
    """{user name: sorted image paths} for a folder of user folders (sorted as text: "user_10" before "user_2")."""
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass --data DIR with one sub-folder per user")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file, not a folder; pass a folder of user folders or a .csv")
    entries = sorted(root.iterdir())
    user_dirs = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
    loose = [p for p in entries if p.is_file() and is_image(p)]
    if not user_dirs:
        hint = f" ({len(loose)} images lie directly in it: move each user's images into its own sub-folder)" \
            if loose else " (it is empty)"
        raise DataError(f"no user folders in {root}{hint}; expected root/<user>/<image>.png")
    if loose:
        notice(f"ignored {len(loose)} images lying directly in {root} (e.g. {loose[0].name}); only images in "
               f"user folders are used: move them into their user's folder")
    check_user_dirs(root, user_dirs)
    name_hidden_folders(root, entries)
    found, skipped, broken, nested = [], [], [p for p in entries if is_broken_link(p)], []
    for d in user_dirs:  # found: (image path, user name, where it was found)
        paths = sorted(d.rglob("*"))
        images = [p for p in paths if p.is_file() and is_image(p)]
        skipped += [p for p in paths if p.is_file() and not is_image(p)]
        broken += [p for p in paths if is_broken_link(p)]
        if not images:
            raise DataError(f"user folder {d} has no images ({KINDS_IN_WORDS}); add images or remove the folder")
        nested += [(d, subs) for subs in [image_subfolders(d, images)] if len(subs) >= 2]
        found += [(p, d.name, p.relative_to(root)) for p in images]
    if skipped:
        notice(f"skipped {len(skipped)} non-image files in {root} (e.g. {skipped[0].relative_to(root)})")
    if broken:
        notice(f"skipped {len(broken)} broken links in {root}: " + ", ".join(
            f"{p.relative_to(root)} → {os.readlink(p)}" for p in broken[:MAX_NAMED])
            + " (their targets do not exist); fix or remove them")
    if nested:
        name_nested_users(root, nested)
    return one_user_per_image(found, root)


def is_broken_link(path):
    """A symbolic link whose target does not exist (is_file and is_dir are both False for it)."""
    return path.is_symlink() and not path.exists()


def name_hidden_folders(root, entries):
    """A notice naming the hidden folders ('.name') of root that hold images: they are not read as users."""
    hidden = [d for d in entries if d.is_dir() and d.name.startswith(".")
              and any(p.is_file() and is_image(p) for p in d.rglob("*"))]
    if hidden:
        notice(f"ignored {len(hidden)} hidden folders holding images in {root} ("
               + ", ".join(d.name for d in hidden[:MAX_NAMED]) + "): names starting with '.' are hidden; rename a "
               "folder without the '.' to read it as a user")


def image_subfolders(user_dir, images):
    """Names of the sub-folders of a user folder that hold its images, [] if any image lies in the folder itself."""
    if any(p.parent == user_dir for p in images):
        return []
    return sorted({p.relative_to(user_dir).parts[0] for p in images})


def name_nested_users(root, nested):
    """A notice naming the user folders whose images lie only in two or more sub-folders: each is read as ONE user,
    which is right for one person's sessions and wrong for a root/site/user layout."""
    said = "; ".join(f"{d.name} ({', '.join(subs[:MAX_NAMED])}{', …' if len(subs) > MAX_NAMED else ''}: "
                     f"{len(subs)} sub-folders)" for d, subs in nested[:MAX_NAMED])
    d, subs = nested[0]
    notice(f"{len(nested)} user folders in {root} hold their images only in sub-folders, each read as one user: "
           f"{said}; if those sub-folders are people (root/site/user), pass the site folder (e.g. {d}) as the data "
           f"folder, one site at a time")


def check_user_dirs(root, user_dirs):
    """A user folder linked to the root (or above it) or to another user's folder would take others' images."""
    real_root, real_dirs = root.resolve(), {}
    for d in user_dirs:
        real = d.resolve()
        if real == real_root or real in real_root.parents:
            raise DataError(f"user folder {d} links to {real}, which contains the data folder {root} and so every "
                            f"user's images; replace the link with a folder of this user's images")
        if real in real_dirs:
            raise DataError(f"user folders {real_dirs[real]} and {d} are the same folder {real}; an image belongs "
                            f"to one user: remove the link")
        real_dirs[real] = d
    names = [d.name for d in user_dirs]
    if all(n.isascii() and n.isdigit() for n in names) and len({len(n) for n in names}) > 1:
        short, long = min(names, key=len), max(names, key=len)
        notice(f"user folders in {root} are numbers of different widths (e.g. {short} and {long}); they are sorted "
               f"as text, not by value: zero-pad the names (e.g. {short.zfill(len(long))}) for numeric order")


def one_user_per_image(entries, source):
    """{user: paths} from (path, user, where) entries; a repeat under one user is dropped, under two users raises.

    Images are compared by resolved path, so a link, a copied row or an './' prefix is the same image.
    """
    by_user, first, repeats = {}, {}, []  # first: resolved path -> (user, where)
    for path, user, where in entries:
        real = path.resolve()
        if real not in first:
            first[real] = (user, where)
            by_user.setdefault(user, []).append(path)
        elif first[real][0] == user:
            repeats.append(f"{where} repeats {first[real][1]}")
        else:
            raise DataError(f"{source}: image {path} is under user {first[real][0]} ({first[real][1]}) and user "
                            f"{user} ({where}); an image belongs to one user: remove one of them")
    if repeats:
        notice(f"dropped {len(repeats)} duplicate images in {source} (e.g. {repeats[0]}); each image is used once")
    return by_user


CSV_HEADERS = ("path", "file", "filename", "image")  # a first row starting with one of these is a header


def read_csv(csv_path):
    """{user value as text: paths} from rows `path,user`; a header row is recognised and skipped.

    Ids are zero-padded ("02", "10") so that the dataset's text sort is numeric order. A row repeating a
    (path, user) is dropped with a notice; the same image under two users is a DataError.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"CSV file {csv_path} does not exist; pass a CSV with rows 'path,user'")
    rows = csv_rows(csv_path)
    if not rows:
        raise DataError(f"CSV file {csv_path} has no rows; expected lines 'path,user' (user an integer)")
    by_user = one_user_per_image([(*csv_entry(csv_path, line, row), f"row {line}") for line, row in rows], csv_path)
    width = len(str(max(by_user)))
    return {str(k).zfill(width): sorted(v) for k, v in sorted(by_user.items())}


def csv_rows(csv_path):
    """[(line number in the file, row)] of the non-blank rows, header dropped. A UTF-8 BOM (Excel) is accepted."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file {csv_path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 "
                        f"(Excel: 'CSV UTF-8')") from None
    if rows and rows[0][1][0].strip().lower() in CSV_HEADERS:
        rows = rows[1:]
    return rows


def csv_entry(csv_path, line, row):
    """(image path, user id) of one CSV row, checked; relative paths are relative to the CSV's folder."""
    if len(row) < 2:
        raise DataError(f"{csv_path} row {line} {row!r} needs two columns 'path,user'")
    path, user = Path(row[0].strip()), row[1].strip()
    try:
        user_id = int(user)
    except ValueError:
        raise DataError(f"{csv_path} row {line}: user {user!r} is not an integer; use integer user ids") from None
    if user_id < 0:
        raise DataError(f"{csv_path} row {line}: user {user_id} is negative (negative ids do not sort by value as "
                        f"text); use user ids 0, 1, 2, ...")
    written, path = path, (path if path.is_absolute() else csv_path.parent / path)
    if not path.is_file():
        raise DataError(f"{csv_path} row {line}: image {path} does not exist{cwd_hint(csv_path, written)}; fix the "
                        f"path or drop the row")
    if path.suffix.lower() not in IMAGE_EXTS:
        raise DataError(f"{csv_path} row {line}: {path} is not a {KINDS_IN_WORDS} image; drop the row")
    return path, user_id


def cwd_hint(csv_path, written):
    """Why a relative CSV path that exists from the working directory is not found: paths are read from the CSV's
    folder, so the CSV means the same wherever it is run from. "" if that is not the case."""
    if written.is_absolute() or not written.is_file():
        return ""
    fixed = os.path.relpath(written.resolve(), csv_path.parent.resolve())
    return (f" (relative paths are read from the CSV's folder {csv_path.parent}; {written} exists relative to the "
            f"working directory: write it as {fixed} or as an absolute path)")
