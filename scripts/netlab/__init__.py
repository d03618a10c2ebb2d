"""`scripts/lab`: the stack across network-namespace "hosts" on this machine (docs/lab.md).

`topology` is what the lab is (hosts, addresses, each host's StackConfig); `netns` builds and
removes its network and checks that it stays contained; `inside` holds the tasks that run in a
lab namespace (replica set, indexes, health); `commands` are up, down, status, client, edge
and bench; `bench` is the benchmark (scripts/benchmark) as a process on the client host.
"""
