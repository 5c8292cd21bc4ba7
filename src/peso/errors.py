"""One exception type for bad user input: the CLI prints its message on one line and exits with code 2."""


class PesoError(Exception):
    """A user-facing error: what is wrong (file, field) and how to fix it, in one line."""

    def __init__(self, where: str, problem: str, fix: str | None = None) -> None:
        self.where, self.problem, self.fix = where, problem, fix
        msg = f"{where}: {problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)
