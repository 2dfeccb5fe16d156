"""Check locally what the Slicer Extensions Index checks when XDiffusion.json is submitted.

    .venv/bin/python scripts/check_extension_index.py [REPO]

The catalog entry is the ```json block of docs/extensions-index.md, and the Index branches it goes
into (``main`` for Preview, one per stable release) are the table under "Where it is listed"
there; the extension's metadata is the top-level CMakeLists.txt, the module's (its documentation
link, its contributors) XDiffusion/XDiffusion.py. Without network: image and documentation URLs are
checked by mapping them to files of this checkout (raw.githubusercontent.com/<owner>/<repo>/<branch>/
<path> -> <path>), which must then be committed and pushed. Prints one line per problem and exits 1, or prints "ok"; then lists what only
the maintainers can do before submitting (the GitHub topic "3d-slicer-extension", contributors'
names and affiliations), which does not fail the check.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

EXTENSION_NAME = "XDiffusion"
MODULE_FILE = Path("XDiffusion") / "XDiffusion.py"
# "Firstname Lastname (Organization)", the form of Slicer's module template.
CONTRIBUTOR = re.compile(r"^[^()]+ \([^()]+\)$")
SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
SCHEMA_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
REQUIRED_KEYS = ("$schema", "category", "scm_url")
# The Index's accepted categories (its scripts/check_description_files.py, 2026).
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT",
    "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning",
    "Otolaryngology", "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy",
    "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis",
    "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography",
    "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
}
# The Index's branches of the current stable releases (Slicer/ExtensionsIndex, 2026-08): stable users
# get an extension only from the branch of their release.
STABLE_BRANCHES = ("5.10", "5.12")
# Dependencies known to be in each branch of the Index (its PyTorch.json, 2026-08).
KNOWN_EXTENSIONS = {"main": {"PyTorch"}, "5.12": {"PyTorch"}, "5.10": {"PyTorch"}}
BRANCH_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|[^|\n]*\|\s*`([^`]+)`\s*\|\s*$", re.M)
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
REPOSITORY_NAME_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
SIZE_LIMIT_MB = 100
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def catalog_entry(repo: Path) -> tuple[dict, str]:
    """The JSON catalog entry in docs/extensions-index.md, and its text."""
    doc = repo / "docs" / "extensions-index.md"
    match = re.search(r"```json\r?\n(.*?)```", doc.read_bytes().decode("utf-8"), re.S)  # bytes: CRs stay
    if match is None:
        raise ValueError(f"{doc}: no ```json block with the catalog entry")
    return json.loads(match.group(1)), match.group(1)


def listed_branches(repo: Path) -> dict[str, str]:
    """Index branch -> scm_revision, from the table under "Where it is listed" in docs/extensions-index.md."""
    text = (repo / "docs" / "extensions-index.md").read_bytes().decode("utf-8")
    start = text.find("## Where it is listed")
    if start < 0:
        return {}
    section = text[start:text.find("\n## ", start + 1) if text.find("\n## ", start + 1) > 0 else len(text)]
    return {branch: revision for branch, revision in BRANCH_ROW.findall(section)}


def minimum_slicer(cmake: str) -> tuple[int, int] | None:
    match = re.search(r"find_package\s*\(\s*Slicer\s+(\d+)\.(\d+)", cmake, re.I)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_branches(repo: Path, cmake: str, entry: dict) -> list[str]:
    """The Index branches the entry goes into: main and every current stable release the extension
    supports; none it cannot build for; pinned revisions that exist; dependencies in each."""
    branches = listed_branches(repo)
    if not branches:
        return ["docs/extensions-index.md: no table of Index branches under '## Where it is listed'"]
    problems = []
    minimum = minimum_slicer(cmake)
    if minimum is None:
        problems.append("CMakeLists.txt: no find_package(Slicer X.Y REQUIRED) saying the oldest Slicer it supports")
        minimum = (0, 0)
    need = f"{minimum[0]}.{minimum[1]}"
    if "main" not in branches:
        problems.append("Index branch main (Slicer Preview) is not listed")
    elif branches["main"] != entry.get("scm_revision", "main"):
        problems.append(f"the catalog entry's scm_revision {entry.get('scm_revision')!r} differs from the main row's "
                        f"{branches['main']!r}")
    for stable in STABLE_BRANCHES:
        if _release(stable) >= minimum and stable not in branches:
            problems.append(f"Index branch {stable} (Slicer {stable}, stable) is not listed: its users get the "
                            "extension only from that branch")
    for branch, revision in branches.items():
        release = _release(branch) if branch != "main" else None
        if branch != "main" and release is None:
            problems.append(f"Index branch {branch!r} is neither main nor a release such as 5.10")
            continue
        if release is not None and release < minimum:
            if revision == "main":
                problems.append(f"the {branch} row builds main, which needs Slicer {need} (find_package): give it "
                                f"the scm_revision of a branch that supports Slicer {branch}, or drop the row")
                continue
            elif not _revision_exists(repo, revision):
                problems.append(f"the {branch} row's scm_revision {revision!r} is no branch or tag of this repository")
        for dependency in entry.get("build_dependencies", []) if isinstance(entry.get("build_dependencies"), list) else []:
            if dependency not in KNOWN_EXTENSIONS.get(branch, set()):
                problems.append(f"build dependency {dependency!r} is not known to be in the Index's {branch} branch")
    return problems


def _release(branch: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+)\.(\d+)", branch)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _revision_exists(repo: Path, revision: str) -> bool:
    for ref in (revision, f"refs/remotes/origin/{revision}"):
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                              capture_output=True, check=False)
        if done.returncode == 0:
            return True
    return False


def cmake_value(cmake: str, name: str) -> str | None:
    # The Index's own patterns: set(NAME "value")
    match = re.search(rf'set\s*\({name}\s*"([^"]*)"\s*\)', cmake, re.I)
    return match.group(1) if match else None


def check(repo: Path) -> list[str]:
    problems: list[str] = []
    try:
        entry, text = catalog_entry(repo)
    except (OSError, ValueError) as error:
        return [f"catalog entry: {error}"]
    cmake_path = repo / "CMakeLists.txt"
    cmake = cmake_path.read_text(encoding="utf-8")

    # JSON schema and file format
    for key in REQUIRED_KEYS:
        if not entry.get(key):
            problems.append(f"catalog entry: {key} is missing")
    for key in sorted(set(entry) - SCHEMA_KEYS):
        problems.append(f"catalog entry: {key!r} is not in the schema")
    if entry.get("$schema") != SCHEMA:
        problems.append(f"catalog entry: $schema should be {SCHEMA}")
    tier = entry.get("tier", 1)
    if not isinstance(tier, int) or isinstance(tier, bool) or not 1 <= tier <= 5:
        problems.append(f"catalog entry: tier {tier!r} must be a whole number 1..5")
    dependencies = entry.get("build_dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        problems.append("catalog entry: build_dependencies must be a list of extension names")
        dependencies = []
    if "\r" in text:
        problems.append("catalog entry: CR line endings; the Index accepts LF only")

    # name and category
    if EXTENSION_NAME.lower().startswith("slicer"):
        problems.append(f"extension name {EXTENSION_NAME!r} must not start with 'Slicer'")
    project = re.search(r"project\s*\(\s*([^\s)]+)", cmake, re.I)
    if project is None or project.group(1).strip("\"'") != EXTENSION_NAME:
        problems.append(f"CMakeLists.txt: project() must be {EXTENSION_NAME}, the catalog file's name")
    category = entry.get("category")
    if category not in ACCEPTED_CATEGORIES:
        problems.append(f"category {category!r} is not one the Index accepts (e.g. 'Image Synthesis')")
    if cmake_value(cmake, "EXTENSION_CATEGORY") != category:
        problems.append(f"CMakeLists.txt: EXTENSION_CATEGORY {cmake_value(cmake, 'EXTENSION_CATEGORY')!r} "
                        f"differs from the catalog entry's {category!r}")

    # repository URL
    scm_url = str(entry.get("scm_url", ""))
    parts = urllib.parse.urlsplit(scm_url)
    if parts.scheme not in ("https", "git"):
        problems.append(f"scm_url {scm_url!r}: the scheme must be https or git")
    path = parts.path.strip("/")
    owner_repo = path[:-4] if path.endswith(".git") else path
    repo_name = owner_repo.split("/")[-1]
    if not repo_name.startswith(REPOSITORY_NAME_PREFIXES):
        problems.append(f"scm_url: the repository name {repo_name!r} must start with 'Slicer'")
    homepage = cmake_value(cmake, "EXTENSION_HOMEPAGE") or ""
    if owner_repo and owner_repo not in homepage:
        problems.append(f"CMakeLists.txt: EXTENSION_HOMEPAGE {homepage!r} is not the repository {owner_repo}")

    # icon and screenshots: PNG files of this checkout
    for name in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        value = cmake_value(cmake, name)
        if not value:
            problems.append(f"CMakeLists.txt: no {name}")
            continue
        for url in value.split():
            problems += _check_image_url(repo, url, name, owner_repo, str(entry.get("scm_revision", "main")))

    # dependencies
    depends = cmake_value(cmake, "EXTENSION_DEPENDS") or "NA"
    declared = [] if depends == "NA" else depends.split()
    if sorted(declared) != sorted(dependencies):
        problems.append(f"build_dependencies {dependencies} differ from EXTENSION_DEPENDS {declared}")
    # the Index branches: Preview and each stable release (dependencies are checked per branch there)
    problems += check_branches(repo, cmake, entry)

    # the module's documentation link and contributors
    problems += check_module(repo, cmake, owner_repo, str(entry.get("scm_revision", "main")))

    # license and size
    if not any((repo / name).is_file() for name in LICENSE_NAMES):
        problems.append(f"no license file at the repository root ({', '.join(LICENSE_NAMES[:3])}, ...)")
    size_mb = repository_size(repo) / 2**20
    if size_mb > SIZE_LIMIT_MB:
        problems.append(f"repository is {size_mb:.0f} MB checked out; the Index allows {SIZE_LIMIT_MB} MB")
    return problems


def module_constants(repo: Path) -> dict:
    """The module file's top-level constants (names in capitals assigned a literal)."""
    if not (repo / MODULE_FILE).is_file():
        return {}
    tree = ast.parse((repo / MODULE_FILE).read_text(encoding="utf-8"))
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return constants


def check_module(repo: Path, cmake: str, owner_repo: str, revision: str) -> list[str]:
    """The help text's documentation link is a page of this repository; the module's contributors
    are the extension's."""
    if not (repo / MODULE_FILE).is_file():
        return [f"no module file {MODULE_FILE}"]
    constants = module_constants(repo)
    problems = []
    url = constants.get("DOCUMENTATION_URL")
    prefix = f"https://github.com/{owner_repo}/blob/{revision}/"
    if not url:
        problems.append(f"{MODULE_FILE.name}: no DOCUMENTATION_URL for the help text's documentation link")
    elif not url.startswith(prefix):
        problems.append(f"{MODULE_FILE.name}: DOCUMENTATION_URL {url!r} is not a page of {owner_repo} at {revision}")
    elif not (repo / urllib.parse.unquote(url[len(prefix):].split("#")[0])).is_file():
        problems.append(f"{MODULE_FILE.name}: DOCUMENTATION_URL {url!r}: {url[len(prefix):]} is not in the repository")
    contributors = ", ".join(constants.get("CONTRIBUTORS") or [])
    if contributors != (cmake_value(cmake, "EXTENSION_CONTRIBUTORS") or ""):
        problems.append(f"{MODULE_FILE.name}: CONTRIBUTORS {contributors!r} differ from CMakeLists.txt's "
                        f"EXTENSION_CONTRIBUTORS {cmake_value(cmake, 'EXTENSION_CONTRIBUTORS')!r}")
    return problems


def by_hand(repo: Path) -> list[str]:
    """What the Index's reviewers ask that no file here can settle: to do by hand before submitting."""
    todo = ["GitHub topic: give the repository the topic 3d-slicer-extension (its About settings)"]
    unnamed = [c for c in module_constants(repo).get("CONTRIBUTORS") or [] if not CONTRIBUTOR.match(c)]
    if unnamed:
        todo.append("contributors: name each with an affiliation, 'Firstname Lastname (Organization)', in "
                    f"CONTRIBUTORS ({MODULE_FILE}) and EXTENSION_CONTRIBUTORS (CMakeLists.txt); now {unnamed}")
    return todo


def _check_image_url(repo: Path, url: str, name: str, owner_repo: str, revision: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http"):
        return [f"{name} {url!r} must be an http(s) URL"]
    prefix = f"/{owner_repo}/{revision}/"
    if parts.netloc != "raw.githubusercontent.com" or not parts.path.startswith(prefix):
        return [f"{name} {url!r} is not a file of {owner_repo} at {revision} (raw.githubusercontent.com{prefix}...)"]
    path = repo / urllib.parse.unquote(parts.path[len(prefix):])
    if not path.is_file():
        return [f"{name} {url!r}: {path.relative_to(repo)} is not in the repository"]
    if path.read_bytes()[:8] != PNG_MAGIC:
        return [f"{name} {url!r}: {path.relative_to(repo)} is not a PNG image"]
    if not _tracked(repo, path):
        return [f"{name} {url!r}: {path.relative_to(repo)} is not committed"]
    return []


def _tracked(repo: Path, path: Path) -> bool:
    done = subprocess.run(["git", "-C", str(repo), "ls-files", "--error-unmatch", str(path.relative_to(repo))],
                          capture_output=True, check=False)
    return done.returncode == 0 or not (repo / ".git").exists()  # outside a clone: the file is enough


def repository_size(repo: Path) -> int:
    """Bytes a fresh clone holds: the tracked files plus one pack of every reachable object.

    The Index clones over the network, which sends one freshly made pack; the local .git folder can
    hold the same objects several times (older packs, loose copies) and so overstates a clone.
    """
    try:
        listing = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a clone: the files are all there is
        return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
    files = [repo / name for name in listing.decode("utf-8", "replace").split("\0") if name]
    total = sum(p.stat().st_size for p in files if p.is_file())
    objects = subprocess.run(["git", "-C", str(repo), "rev-list", "--objects", "--all"],
                             capture_output=True, check=True).stdout
    pack = subprocess.run(["git", "-C", str(repo), "pack-objects", "--stdout", "-q"], input=objects,
                          capture_output=True, check=True).stdout
    return total + len(pack)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    repo = Path(argv[0] if argv else Path(__file__).resolve().parents[1]).resolve()
    problems = check(repo)
    for problem in problems:
        print(problem)
    if not problems:
        print("ok")
    for line in by_hand(repo):
        print(f"by hand before submitting: {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
