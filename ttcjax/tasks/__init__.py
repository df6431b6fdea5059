"""Built-in tasks; ``arithmetic`` is the default task for tiny character-level policies."""

from ttcjax.tasks import arithmetic

__all__ = ["arithmetic"]
