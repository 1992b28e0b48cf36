"""The base of every settings model: unknown keys are errors, values are frozen."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A settings model that refuses keys it does not know (a typo is an error, not a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
