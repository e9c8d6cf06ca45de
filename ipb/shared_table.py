"""A sweep's colony table in the Ray object store once, and its decoded patch bank once per node.

    with shared_table(TABLE) as name: ...   # ipb/sweep.py; a trial: table_data(name)

The driver reads the table once (`put_table`) and a named actor on its node holds it for the
sweep's trials (`shared_table`, `table_data`): every trial splits it into row indices, and its
workers take their rows from that one copy. Decoding the colonies into a `ColonyBank` cost
every trial ~25 s on 2 cores (17.9k colonies), so it is done once per node and patch size, by a
`_NodeBank` actor on that node, which the holder starts when the node's first worker asks
(`node_bank`): what crosses the network is the compressed table (each node's object store
caches its copy), never the decoded bank, about 10 times larger (the study's table: 218 MiB
against 2.0 GiB at 48 px, 2.6 GiB at 128 px); a node that runs no
training worker (a KubeRay head with num-cpus 0 and a 4 GiB /dev/shm) decodes nothing. The
node banks are owned by the holder, so they end with it when the sweep ends.
"""
from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

ROW_COLUMNS = ["colony_id", "label", "multi_label", "source", "group", "crop", "mask"]
SPLIT_COLUMNS = ["colony_id", "label", "multi_label", "source", "group"]


def put_table(table: Path | str) -> dict[str, Any]:
    """Read the colony table once and put it in the Ray object store: {"table": location,
    "manifest", "meta": the split's columns (a DataFrame, small), "rows": ObjectRef of an Arrow
    table of every column the workers read, in meta's row order}. A sweep shares one for all
    its trials (`shared_table`), so the object store holds one copy whatever
    `sweep.max_concurrent` is. Not Ray Data: its datasets cost every trial a DatasetManager
    actor, a stats actor's work and a streaming executor in each worker (~6 CPU-s a trial on 2
    cores, benchmarks/sweep.py), and read tasks could starve behind workers holding every CPU."""
    import pyarrow as pa
    import ray

    from ipb.data.table import load_colonies, read_manifest

    manifest = read_manifest(table)
    rows = load_colonies(table, columns=ROW_COLUMNS)
    ref = ray.put(pa.Table.from_pandas(rows, preserve_index=False))
    return {"table": str(table), "manifest": manifest, "meta": rows[SPLIT_COLUMNS], "rows": ref}


class _NodeBank:
    """The whole table decoded into a ColonyBank per patch size, on one node, built at the
    first request (a sync actor: the node's other workers wait for that one build)."""

    def __init__(self, rows: list):
        self.rows = rows[0]          # in a list, so Ray hands over the reference, not the table
        self.banks: dict[int, Any] = {}

    def bank(self, size: int) -> list:
        """[ObjectRef of ColonyBank.arrays()] in meta's row order, in this node's store."""
        if size not in self.banks:
            import ray

            from ipb.data.patches import ColonyBank
            rows = ray.get(self.rows).select(["crop", "mask"]).to_pylist()
            self.banks[size] = ray.put(ColonyBank.from_rows(rows, size).arrays())
        return [self.banks[size]]


class _TableHolder:
    """Holds a sweep's `put_table` for its trials (an actor: see `shared_table`) and one
    `_NodeBank` per node that asked for a bank."""

    def __init__(self, name: str, data: dict[str, Any]):
        self.name, self.data = name, data
        self.nodes: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        return self.data

    def node_bank(self, node_id: str, replace: bool = False) -> list:
        """[the _NodeBank actor of node `node_id`], started there on the first request (and
        again with `replace`, when the last one died, e.g. out of memory while decoding)."""
        if replace or node_id not in self.nodes:
            import time

            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            on = NodeAffinitySchedulingStrategy(node_id, soft=False)
            for wait in (0.0, 0.5, 1.0, 2.0, 4.0, None):
                try:
                    self.nodes[node_id] = ray.remote(_NodeBank).options(
                        name=bank_name(self.name, node_id), num_cpus=0, scheduling_strategy=on
                    ).remote([self.data["rows"]])
                    break
                except ValueError:      # the dead one's name is not released yet
                    if wait is None:
                        raise
                    time.sleep(wait)
        return [self.nodes[node_id]]


@contextlib.contextmanager
def shared_table(table: Path | str):
    """The table in the object store once for every trial of a sweep, freed on exit. Yields
    the name under which trials find it (`table_data`). The reference is held by a named
    actor on this node: a reference handed to Tune itself (with_parameters, the param space)
    is pickled out of band, which pins the object until this process exits."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = f"ipb-table-{uuid.uuid4().hex[:12]}"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    holder = ray.remote(_TableHolder).options(name=name, num_cpus=0, scheduling_strategy=here
                                              ).remote(name, put_table(table))
    try:
        yield name
    finally:
        ray.kill(holder)      # and with it the node banks it owns


def bank_name(holder: str, node_id: str) -> str:
    """The name of the _NodeBank of sweep table `holder` on node `node_id`."""
    return f"{holder}-bank-{node_id}"


def table_data(name: str) -> dict[str, Any]:
    """The `put_table` dict that `shared_table` published under `name` (+ "holder": name)."""
    import ray
    return {**ray.get(ray.get_actor(name).get.remote()), "holder": name}


def node_bank(holder: str, size: int):
    """The ColonyBank of the whole table at patch `size`, decoded once on this node (zero-copy
    from this node's object store). A node bank that died is started again once."""
    import ray
    from ray.exceptions import RayActorError

    from ipb.data.patches import ColonyBank
    node = ray.get_runtime_context().get_node_id()
    table = ray.get_actor(holder)
    for again in (False, True):
        [actor] = ray.get(table.node_bank.remote(node, again))
        try:
            [ref] = ray.get(actor.bank.remote(size))
            return ColonyBank.from_arrays(ray.get(ref))
        except RayActorError as e:
            if again:
                raise RuntimeError(
                    f"the patch bank of node {node[:12]} died twice while decoding the table "
                    f"at {size} px ({type(e).__name__}); the likeliest cause is memory: the "
                    "bank takes about 10x the table's size in the node's object store and "
                    "heap (the study's 17.9k colonies: 2.0 GiB at 48 px); give the nodes more "
                    "memory or object store (ray start --object-store-memory)") from e
