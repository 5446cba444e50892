"""Training loops: the explainer and the target CNN."""
