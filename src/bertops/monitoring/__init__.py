"""Monitoring: what the service served (:mod:`recorder`), the labels clients send back (:mod:`feedback`), and the
drift check that compares a recent window with the champion's training data (:mod:`drift`, :mod:`check`,
:mod:`report`). See docs/monitoring.md."""
