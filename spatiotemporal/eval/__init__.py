"""Evaluators with the papers' semantics: kinetics.py (multi-view, missing-video accounting),
scannet.py (official ScanNet semantic-label metric, fragment voting, submission files), plots.py."""
