"""Files shipped with the package that live outside its folder in the repository: the models (exported_models/) and
the protocol's JSON Schemas (schema/).

A wheel installs them as the packages `sendreturn_mood.exported_models` and `sendreturn_mood.schema` (pyproject's
package-dir). Run from a source checkout, e.g. `python -m sendreturn_mood` at the repository root, which puts the
source folder ahead of any installed copy, there are no such packages: the folders are found beside the source
folder instead (and a checkout uses its own, not the one an editable install points to). Either way the caller gets
one directory, whatever the working directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MODELS = "exported_models"
SCHEMAS = "schema"


def shipped_dir(name: str) -> Path:
    """The directory of the shipped folder `name` (MODELS or SCHEMAS): in a source checkout (this package's folder
    beside a pyproject.toml) the checkout's own folder, never another checkout's through an editable install;
    else the installed package's. ModuleNotFoundError when neither exists."""
    checkout = Path(__file__).resolve().parent.parent
    beside = checkout / name
    if (checkout / "pyproject.toml").is_file() and (beside / "__init__.py").is_file():
        return beside
    return Path(str(resources.files(f"{__package__}.{name}")))
