"""Explaining an unlabelled image set (the probe) and comparing groups of it."""
