# Consul ACL policy of a read-only worker (`coordinator worker`): it registers nothing and writes
# nothing; it reads its assignments and whether a leader exists. To confine a worker to its own
# keys, narrow the first rule to `key_prefix "service/coordinator/assignments/<id>/"`.
# One rule per line: tests/tests/deploy_acl.rs removes single lines to check that each is needed.
#
#   consul acl policy create -name coordinator-worker -rules @deploy/consul/worker-policy.hcl
#   consul acl token create -policy-name coordinator-worker -description "coordinator worker"
#
key_prefix "service/coordinator/assignments/" { policy = "read" }
key "service/coordinator/leader" { policy = "read" }
