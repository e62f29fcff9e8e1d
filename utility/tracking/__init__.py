"""Optional experiment trackers (config key ``trackers``): wandb, MLflow. They follow the run's CSV
logs (hub.py); each tracker is one small module behind base.Tracker, found by name (registry.py).
Their libraries are optional extras (requirements-trackers.txt) imported only when a run asks."""
from utility.tracking.hub import Tracking, tracking_for
from utility.tracking.registry import register_tracker, require_trackers, tracker_names

__all__ = ["Tracking", "tracking_for", "register_tracker", "require_trackers", "tracker_names"]
