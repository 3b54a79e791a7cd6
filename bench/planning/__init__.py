"""The capacity planner's parts: fleet settings, workload, cost profiles, the event simulation, outputs."""
