"""Which filters a class relies on: the constrained lasso selection and the ablation test."""
