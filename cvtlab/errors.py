"""Errors that cvtlab reports to users as one clear line (the CLI prints them without a traceback)."""


class CvtlabError(Exception):
    """Base class: anything a user can cause by passing a bad file, flag or shape."""


class CheckpointError(CvtlabError):
    """A checkpoint cannot be read, is of an unknown layout, or does not fit the model."""


class ConfigError(CvtlabError):
    """A model name, recipe key or flag value is not valid."""


class DataError(CvtlabError):
    """A data set or image cannot be used."""
