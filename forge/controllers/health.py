"""Health: Instance probe results → Deployment readiness → App availability (key = app name).

Keyed by App rather than by Deployment because the App's ``Available`` condition depends on
which release is live as much as on the Instances, and one pass over an App's records is
cheap. For every Deployment: ``status.replicas`` (current Instances asked to run and not
finished), ``status.readyReplicas`` (of those, Running and ready) and a ``Ready`` condition
(True once every wanted replica is ready). For the App: ``Available`` True iff the live
release has at least one ready Instance (MinimumReplicasAvailable / NoReadyInstances /
NoLiveRelease). Writes only what changed; ``lastTransitionTime`` moves only with the status.
"""

from __future__ import annotations

from forge.clock import iso
from forge.controllers import deploystate as ds
from forge.controllers.base import DONE, AppKeyedController, Result
from forge.errors import NotFound
from forge.models import (
    DEPLOYMENT_TERMINAL,
    INSTANCE_TERMINAL,
    LABEL_APP,
    App,
    AppStatus,
    Deployment,
    DeploymentStatus,
    Instance,
    set_condition,
)


def deployment_health(
    app: App | None, dep: Deployment, instances: list[Instance], now_iso: str
) -> DeploymentStatus:
    """The Deployment's status with replicas, readyReplicas and Ready recomputed."""
    st = dep.status.model_copy(deep=True)
    name = dep.metadata.name
    running = [
        i
        for i in ds.current_by_slot(name, instances).values()
        if i.spec.desired == "Running" and i.status.phase not in INSTANCE_TERMINAL
    ]
    st.replicas = len(running)
    st.ready_replicas = sum(1 for i in running if ds.is_ready(i))
    if st.phase in DEPLOYMENT_TERMINAL:
        set_condition(st, "Ready", "False", st.phase, f"{name} is {st.phase.lower()}", now_iso)
        return st
    want = ds.effective_config(app, dep, None).replicas
    if st.ready_replicas >= want:
        set_condition(
            st, "Ready", "True", "AllReplicasReady", f"{st.ready_replicas}/{want} instances ready", now_iso
        )
    else:
        set_condition(
            st, "Ready", "False", "ReplicasNotReady", f"{st.ready_replicas}/{want} instances ready", now_iso
        )
    return st


def app_health(app: App, deployments: list[Deployment], instances: list[Instance], now_iso: str) -> AppStatus:
    st = app.status.model_copy(deep=True)
    set_condition(st, "Available", *ds.app_available(app, deployments, instances), now_iso)
    return st


class HealthController(AppKeyedController):
    name = "health"
    watches = ("App", "Deployment", "Instance")

    def reconcile(self, key: str) -> Result | None:
        try:
            app: App | None = self.store.get(App, key)
        except NotFound:
            app = None
        deps: list[Deployment] = [
            d for d in self.store.list(Deployment, {LABEL_APP: key})[0] if d.spec.app == key
        ]
        insts: list[Instance] = [
            i for i in self.store.list(Instance, {LABEL_APP: key})[0] if i.spec.app == key
        ]
        now_iso = iso(self.clock.now())
        for dep in deps:
            new = deployment_health(app, dep, insts, now_iso)
            if new.model_dump() != dep.status.model_dump():
                obj = dep.copy_deep()
                obj.status = new
                self.store.update_status(obj)
        if app is not None:
            new_app = app_health(app, deps, insts, now_iso)
            if new_app.model_dump() != app.status.model_dump():
                obj = app.copy_deep()
                obj.status = new_app
                self.store.update_status(obj)
        return DONE
