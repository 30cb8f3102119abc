# Consul ACL policy of a full member (`coordinator member`): registers with a session, campaigns
# for the leader key and, while it leads, writes the assignments in fenced transactions.
# Default key layout (`service/coordinator/`); change the paths with the prefix settings.
# One rule per line: tests/tests/deploy_acl.rs removes single lines to check that each is needed.
#
#   consul acl policy create -name coordinator-member -rules @deploy/consul/member-policy.hcl
#   consul acl token create -policy-name coordinator-member -description "coordinator member"
#
# Sessions: each member's own (on its agent's node), and the leader ends the session of a member
# that never acknowledges a move (handoff_timeout): session write on every node.
session_prefix "" { policy = "write" }
# Its member key (bound to its session); the leader reads every member's.
key_prefix "service/coordinator/members/" { policy = "write" }
# The election: acquire / release the leader key, read it for the fence.
key "service/coordinator/leader" { policy = "write" }
# Work items: read only (`coordinator work put/rm` is an operator's token).
key_prefix "service/coordinator/work/" { policy = "read" }
# Assignments: the leader writes every member's; each member reads its own.
key_prefix "service/coordinator/assignments/" { policy = "write" }
# Moves in flight, written by the leader with each revoke.
key_prefix "service/coordinator/handoff/" { policy = "write" }
# Drain requests: read (watched), and the member deletes its own as it leaves.
key_prefix "service/coordinator/drain/" { policy = "write" }
# The sequence key every leader transaction checks and bumps.
key "service/coordinator/sequence" { policy = "write" }
# session_check = true: a TTL health check on the member's agent, registered as the service
# "coordinator-<instance id>" (name "coordinator"), which its session is bound to. Without this
# rule the member falls back to a plain session TTL and says so at warn.
service "coordinator" { policy = "write" }
