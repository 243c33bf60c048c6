"""Neural-network modules: radial bases, cutoff, MLPs, PaiNN, energy models."""

from .energy import EnergyModel
from .mlp import ACTIVATIONS, MLP, shifted_softplus
from .painn import PaiNN, PaiNNLayer, make_radial_basis
from .radial import CosineCutoff, GaussianRBF, SincRBF

__all__ = ["ACTIVATIONS", "CosineCutoff", "EnergyModel", "GaussianRBF", "MLP", "PaiNN",
           "PaiNNLayer", "SincRBF", "make_radial_basis", "shifted_softplus"]
