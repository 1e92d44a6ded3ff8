"""The one error type users see for bad input: printed as a single line, non-zero exit."""


class InputError(Exception):
    """Bad user input. ``str()`` is ``"<path>: <problem>"`` when a path is given."""

    def __init__(self, path, problem=None):
        self.path = None if problem is None else str(path)
        self.problem = str(path) if problem is None else str(problem)
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")
