"""Planning: the generative and the control planner, and the factory of both modes."""
