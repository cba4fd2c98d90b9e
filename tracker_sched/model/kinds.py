"""The model class of each bundle kind: the one table a bundle reads to rebuild its members."""

from __future__ import annotations

from typing import Literal

from tracker_sched.model.control import KIND as CONTROL_KIND
from tracker_sched.model.control import ControlODE
from tracker_sched.model.latent import LatentODE

Kind = Literal["latent_ode", "control_ode"]
GENERATIVE_KIND: Kind = "latent_ode"

MODEL_CLASSES: dict[str, type[LatentODE]] = {
    GENERATIVE_KIND: LatentODE,  # the lr is decoded (generative mode)
    CONTROL_KIND: ControlODE,  # the lr is an input of the dynamics (control mode)
}
