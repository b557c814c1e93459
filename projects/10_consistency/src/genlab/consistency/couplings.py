"""Minibatch optimal-transport couplings (Tong et al. 2024, "Improving and Generalizing Flow-Based Generative Models
with Minibatch Optimal Transport"; Pooladian et al. 2023): pair each noise draw of a batch with a data point so
that the total squared distance is least, then train the flow on the straight lines between the pairs.

Between two empirical measures of B equal-weight points the optimal plan is a permutation (a vertex of the
Birkhoff polytope), so exact minibatch OT with the squared Euclidean cost is the assignment problem

    sigma* = argmin_sigma sum_i || x0_sigma(i) - x1_i ||^2

solved here by SciPy's exact solver (the role POT's emd plays in the paper's code). Paths between paired points
cross less than under the independent coupling, so the learned flow is straighter without a reflow.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

Tensor = torch.Tensor


def ot_pairing(x0: Tensor, x1: Tensor) -> Tensor:
    """The permutation (B,) for which x0[permutation] paired with x1 has the least total squared distance."""
    # (B, B): cost[i, j] = ||x0_i - x1_j||^2
    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).square()
    rows, columns = linear_sum_assignment(cost.cpu().numpy())
    permutation = torch.empty(len(x1), dtype=torch.long)
    permutation[torch.as_tensor(columns)] = torch.as_tensor(rows)  # data point columns[k] gets noise rows[k]
    return permutation.to(x0.device)


def ot_couple(x0: Tensor, x1: Tensor) -> Tensor:
    """The noise batch reordered to pair with the data batch by exact minibatch OT (labels stay with the data)."""
    return x0[ot_pairing(x0, x1)]
