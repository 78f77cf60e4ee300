"""Vocabulary-parallel (and data-parallel) cross-entropy across processes.

Each process of a *vocabulary group* ``comm`` holds the logits of the classes
``[class_start, class_start + C_local)`` of ``num_classes`` for the same rows; targets are
global class indices, the same on every rank.  One call returns the full, unsharded loss
(the same on every rank) and, for :func:`cross_entropy_with_grad`, this rank's slice of
the gradient: the slices concatenate to the unsharded gradient.

Communication per call over ``comm`` (N = the number of rows), as float64 payloads:

- one MAX all-reduce of N + 5 values (each rank's transformed local lse, plus the
  argument checks: an error flag, ``num_classes`` and the shard bounds);
- one SUM all-reduce of 3N + 2 values (the exps of the local lse below the maximum,
  the count of shards at it, and each shard's share of the row loss -- target logit and
  smoothing sum fused into one value per row; plus the tiling check); with probability
  targets 4N + 2 (each shard's sum of w_c t'_c too);
- ``MPICommunicator(comm, fused=True)`` makes the two ONE all-reduce of 8 (N + 2)
  values (records combined by a user-defined ``MPI.Op``; docs/design.md §6);
- :func:`cross_entropy_with_grad` and backward: nothing more.

With ``dp_comm`` (the data-parallel group of a data x vocabulary grid) and
``reduction='mean'`` without ``num_items``, one more SUM all-reduce of 3 values over
``dp_comm`` gives the global normalisers.  The engines are ``torch.distributed`` process
groups and mpi4py communicators, behind one interface, :class:`Communicator`
(docs/design.md §6).  ``import fastce.distributed`` imports neither torch nor mpi4py.
"""
from ._ce import cross_entropy, cross_entropy_with_grad, global_weight
from ._comm import (Communicator, CountingCommunicator, MPICommunicator, TorchCommunicator,
                    as_communicator)
from ._linear import linear_cross_entropy_with_grad

__all__ = ["cross_entropy", "cross_entropy_with_grad", "linear_cross_entropy_with_grad",
           "global_weight", "Communicator", "TorchCommunicator", "MPICommunicator",
           "CountingCommunicator", "as_communicator"]
