"""Replicas over several hosts on Ray Serve (``pip install ggufworker[ray]``).

``serve run ggufworker.deploy:app`` builds the application from its arguments (see
:class:`~ggufworker.deploy.app.DeployOptions` and docs/DEPLOY.md); ``ggufworker serve --ray
ADDRESS`` deploys it on a running cluster. Importing this package imports Ray.
"""

from ggufworker.deploy.app import DeployOptions, app, build_app, run_on_ray

__all__ = ["DeployOptions", "app", "build_app", "run_on_ray"]
