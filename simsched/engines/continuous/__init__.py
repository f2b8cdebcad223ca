"""The continuous (iteration-level) batching engine: vLLM 0.33.0's v1 scheduler, step by step.

Reading guide, one module per concept, each naming the vLLM code it mirrors:

- ``options``       the ``engine=continuous`` settings and vLLM's defaults per GPU class;
- ``state``         the run's state as plain arrays (requests, replicas, KV pools, logs);
- ``block_hash``    content hashes of KV blocks (prefix caching);
- ``block_pool``    the paged KV cache: free queue, prefix-cache map, ``allocate_slots``;
- ``waiting_queue`` the WAITING queue policies (fcfs, priority; bins, lpm);
- ``policies``      what each ``scheduler`` option means on this engine (order and batch cap);
- ``controller``    Pang et al.'s controllers capping the running batch;
- ``schedule``      step formation (``Scheduler.schedule``) into a plan;
- ``update``        applying a step's output (``Scheduler.update_from_output``);
- ``step_time``     how long a step takes (GPU step form, CPU time, async overlap);
- ``fast_forward``  exact jumps over runs of identical decode steps;
- ``routing``       the ``router`` group: which replica an arrival goes to, from the state then;
- ``fleet``         heterogeneous fleets: pools of replicas with their own settings and speed;
- ``loop``          the time loop over G replicas (arrivals, routing, ticks, sampling);
- ``simulate``      building the arrays, running the loop, collecting the result;
- ``result``        the result columns and the invariants every run checks;
- ``conformance``   step-conformance mode: vLLM-style step records for golden traces.

Everything under ``state``..``loop`` is plain Python over numpy arrays and scalars, so the
same functions run uncompiled on small runs and compiled by numba on large ones
(``simsched.jit``).
"""
from simsched.engines.continuous.options import ContinuousEngine
from simsched.engines.continuous.result import ContinuousResult
from simsched.engines.continuous.simulate import Hardware, simulate_continuous

__all__ = ["ContinuousEngine", "ContinuousResult", "Hardware", "simulate_continuous"]
