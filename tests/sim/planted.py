"""Known faults planted one at a time (``make sim-selftest``): each must make some seed fail.

A planted fault is a small, realistic bug put into the real code path for one run — a patched
function of ``forge`` (restored afterwards), or a write that goes to the store changed the way a
broken caller would have written it. Planting at the store boundary (the webhook's release, the
rollback's release) keeps the fault meaningful however the fix branches restructure the code
that builds those records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.sim.world import ControlPlane, World

# fault → (what it breaks, the families of seeds that can show it)
PLANTED: dict[str, str] = {
    "router-unready": "the router routes an Instance that is not ready",
    "rollout-min-ready": "rollout promotes before health.min_ready",
    "webhook-drops-processes": "the webhook's release drops the App's processes from its config",
    "agent-adoption-crash": "the node agent counts an adoption as a crash",
    "rollback-ignores-config": "a rollback release carries the App's config, not its target's",
    "gc-deletes-live": "gc deletes Instances of the live release",
    "source-ignores-stale": "the source controller builds a stale (replayed older) push",
    "leader-fence-off": "a deposed leader's writes are not fenced",
}


@contextlib.contextmanager
def _patched(obj: Any, attr: str, value: Any) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


@contextlib.contextmanager
def planted_patches(world: World, planted: str | None) -> Iterator[None]:
    import forge.api.releases as releases
    from tests.sim.fakes import FakeGitSource

    with contextlib.ExitStack() as stack:
        # forge deploy --ref resolves the ref through git: GitHub here is the simulator's
        stack.enter_context(_patched(releases, "GitSource", lambda _root: FakeGitSource(world.github)))
        if planted == "router-unready":
            import forge.proxy.routing as routing
            from forge.models import Instance, Node

            def any_dial(inst: Instance, nodes: dict[str, Node]) -> str | None:
                st = inst.status
                if inst.spec.desired != "Running" or not st.port:
                    return None
                node = nodes.get(inst.spec.node or "")
                if node is None:
                    return None
                return f"{st.address or node.spec.address}:{st.port}"

            stack.enter_context(_patched(routing, "instance_dial", any_dial))
        elif planted == "rollout-min-ready":
            import forge.controllers.deploystate as ds

            stack.enter_context(_patched(ds, "min_ready_wait", lambda *_a, **_k: 0.0))
        elif planted == "source-ignores-stale":
            from forge.controllers.source import SourceController

            stack.enter_context(_patched(SourceController, "_stale_head", lambda *_a, **_k: None))
        elif planted == "leader-fence-off":
            from forge.controllers.leader import LeaderElector

            real = LeaderElector._fence

            def unfenced(self: LeaderElector, lease: Any) -> None:
                real(self, lease)
                if self.fence_store is not None:
                    self.fence_store.fence = None

            stack.enter_context(_patched(LeaderElector, "_fence", unfenced))
        elif planted in ("webhook-drops-processes", "rollback-ignores-config"):
            world.api_store.transform = _release_transform(world, planted)
        yield


def _release_transform(world: World, planted: str) -> Any:
    from forge.models import App, Deployment

    def transform(obj: Any) -> Any:
        if not isinstance(obj, Deployment) or obj.spec.config is None:
            return obj
        obj = obj.model_copy(deep=True)
        if planted == "webhook-drops-processes" and obj.spec.trigger.type == "webhook":
            obj.spec.config.processes = None
        if planted == "rollback-ignores-config" and obj.spec.trigger.type == "rollback":
            app = world.api_store.inner.get(App, obj.spec.app)
            obj.spec.config.env = dict(app.spec.env)
            obj.spec.config.replicas = app.spec.replicas
            obj.spec.config.domains = list(app.spec.domains)
        return obj

    return transform


def plant_controllers(world: World, cp: ControlPlane) -> None:
    """Faults that live in one controller object (made again at every control-plane start)."""
    if world.planted == "gc-deletes-live":
        from forge.controllers.gc import GcController
        from forge.errors import ForgeError
        from forge.models import App, Instance

        gc = next(c for c in cp.controllers if isinstance(c, GcController))
        real = gc.reconcile

        def reconcile(key: str) -> Any:
            out = real(key)
            try:
                app = gc.store.get(App, key)
            except ForgeError:
                return out
            for inst in gc.store.list(Instance)[0]:
                if inst.spec.deployment == app.status.live_deployment and inst.status.ready:
                    gc.store.delete("Instance", inst.metadata.name)
                    break
            return out

        gc.reconcile = reconcile  # type: ignore[method-assign]
