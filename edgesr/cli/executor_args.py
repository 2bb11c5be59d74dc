"""--executor local|ray and --ray-address (convert --zoo / convert DIR / upscale), shared."""

from __future__ import annotations


def add_executor_args(p, what: str) -> None:
    g = p.add_argument_group("running on Ray (docs/ray.md)")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help=f"local (default): this process; ray: {what} as Ray tasks (retried when a worker dies; "
                        "needs pip install 'edgesr[ray]')")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to run on (HOST:PORT of `ray start --head`, or auto); default: a private "
                        "local Ray instance with this machine's cores, stopped at the end")
    g.add_argument("--ray-workers", type=int, metavar="N",
                   help="upscale: model sessions (Ray Data actors) at once (default: one per CPU of the cluster)")


def on_ray(args) -> bool:
    """Whether to run on Ray; --ray-address/--ray-workers without --executor ray is an error."""
    from ..errors import EdgesrError

    ray = getattr(args, "executor", "local") == "ray"
    if not ray:
        given = [f for f, v in (("--ray-address", getattr(args, "ray_address", None)),
                                ("--ray-workers", getattr(args, "ray_workers", None))) if v is not None]
        if given:
            raise EdgesrError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --executor ray")
    if getattr(args, "ray_workers", None) is not None and args.ray_workers < 1:
        raise EdgesrError(f"--ray-workers must be at least 1, got {args.ray_workers}")
    if ray:
        from ..distributed.cluster import ray_module

        ray_module()  # missing extra: one line now, before any work
    return ray
