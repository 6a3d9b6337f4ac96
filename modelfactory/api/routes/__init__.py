"""One router per resource of the control plane."""
