"""The factory: order spec, planner (order -> stage DAG), stage cache and runner. Heavy compute lives in the
layers the stages call (tasks, train, compress), never here."""
