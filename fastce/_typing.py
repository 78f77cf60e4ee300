"""Type aliases of fastce's public signatures (for type checkers and readers).

Annotations are never evaluated on the call path (``from __future__ import annotations``
in every module); these names exist at run time so that ``typing.get_type_hints`` and the
docs can resolve them.  CuPy arrays, which have no type information, are accepted where
``ArrayLike`` is (the GPU path returns CuPy arrays where these say ``NDArray``).
"""
from typing import Any, Literal, Tuple, Union

import numpy as np
import numpy.typing as npt

__all__ = ["Reduction", "ScalarReduction", "FloatArray", "FloatScalar", "Loss", "LossAndLse",
           "GradOutput", "Float64Array"]

#: ``reduction=`` of every loss
Reduction = Literal["mean", "sum", "none"]
#: the reductions that give one number
ScalarReduction = Literal["mean", "sum"]
#: a float array (float32/float64, or float16/bfloat16 where half precision is accepted)
FloatArray = npt.NDArray[Any]
#: a NumPy scalar of the logits' dtype (float32 for half-precision logits)
FloatScalar = np.floating[Any]
Float64Array = npt.NDArray[np.float64]
#: a loss of any reduction: a NumPy scalar ('mean'/'sum') or one value per row ('none')
Loss = Union[FloatScalar, FloatArray]
LossAndLse = Tuple[Loss, Float64Array]
#: the upstream gradient: a number, or for 'none' an array broadcasting to the per-row loss
GradOutput = Union[float, npt.ArrayLike]
