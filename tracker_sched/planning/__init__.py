"""Planning: the planner base (live window, guards, fallback), the generative and the control
planner, and the factory of both modes."""
