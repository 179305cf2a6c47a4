"""The exception types for user mistakes: the CLI prints them as a single line and exits 2; the
server answers them with a 4xx error naming the parameter."""


class UserError(Exception):
    """Bad input from the user (a missing file, a wrong value): shown without a traceback."""


class SettingError(UserError):
    """A setting whose value is out of its bounds; `setting` names it (e.g. "top_p")."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting
