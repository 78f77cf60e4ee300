"""fastce's exception classes (a leaf module: every layer may import it)."""

__all__ = ["ArgumentValueError", "ArgumentTypeError"]


class ArgumentValueError(ValueError, RuntimeError):
    """A bad argument value for which torch raises ``RuntimeError``.

    Catchable as ``ValueError`` (NumPy convention) and as ``RuntimeError`` (torch parity),
    as NumPy's ``AxisError`` is both a ``ValueError`` and an ``IndexError``.
    """


class ArgumentTypeError(TypeError, RuntimeError):
    """A bad argument dtype for which torch raises ``RuntimeError`` (see ArgumentValueError)."""
