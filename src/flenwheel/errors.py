"""Typed errors. Every message says what went wrong and how to fix it."""

from __future__ import annotations


class FlenwheelError(Exception):
    """Base of every error flenwheel raises on purpose; the CLI prints these without a traceback."""


class ProjectNotFound(FlenwheelError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"No flenwheel project at {path}: run `flenwheel init {path}` first, "
            "or point --project / FLENWHEEL_PROJECT at an existing project."
        )


class CharacterNotFound(FlenwheelError):
    def __init__(self, name: str, known: list[str]) -> None:
        hint = f" Known characters: {', '.join(known)}." if known else " The project has no characters yet."
        super().__init__(
            f"No character named {name!r}.{hint} Create one with "
            f"`flenwheel character create {name} --token TOKEN --class CLASS`."
        )


class CharacterExists(FlenwheelError):
    def __init__(self, name: str) -> None:
        super().__init__(f"A character named {name!r} already exists: pick another name.")


class InvalidInput(FlenwheelError):
    """A value given by the user is malformed; the message names the value and the accepted form."""


class AssetNotFound(FlenwheelError):
    def __init__(self, ref: str, character: str) -> None:
        super().__init__(
            f"No asset {ref!r} for character {character!r}: use an asset id, a sha256 prefix or the file "
            f"name shown by `flenwheel curate {character}`."
        )


class ImageRejected(FlenwheelError):
    """A file could not be taken in as an image; `reason` is a short machine-stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class IdentityUnknown(FlenwheelError):
    """The identity gate cannot tell who the character is."""


class ReferenceUnusable(IdentityUnknown):
    """A photo the user marked `--reference` cannot define the identity; `problems` names each file and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "These reference photos cannot define who the character is: "
            + "; ".join(problems)
            + ". Replace each with a clear photo of the character's face (`flenwheel ingest NAME PHOTO "
            "--reference`), or unmark it with `flenwheel reference NAME ASSET --off`."
        )


class DatasetEmpty(FlenwheelError):
    pass


class ExportError(FlenwheelError):
    pass


class MissingDependency(FlenwheelError):
    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed: run `pip install 'flenwheel[{extra}]'` "
            "(or the README's set-up command, which installs every extra)."
        )
