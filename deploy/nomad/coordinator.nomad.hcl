# coordinator members on Nomad: a service job of 3 allocations (docker driver, the image of
# deploy/docker/Dockerfile), registered in Consul with a check on /readyz.
#   nomad job run deploy/nomad/coordinator.nomad.hcl
# The ACL token (deploy/consul/member-policy.hcl) is read from Nomad's variable
# nomad/jobs/coordinator (key consul_token) into the task's secrets.
job "coordinator" {
  type = "service"

  update {
    # One member drains at a time.
    max_parallel     = 1
    min_healthy_time = "15s"
    healthy_deadline = "5m"
  }

  group "members" {
    count = 3

    network {
      port "http" {
        to = 9100
      }
    }

    service {
      name = "coordinator"
      port = "http"

      # Ready once the first settled workload is published and the store is reachable.
      check {
        name     = "readyz"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 3
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    task "coordinator" {
      driver = "docker"

      config {
        image = "coordinator:latest"
        args  = ["member", "--config", "/local/coordinator.toml"]
        ports = ["http"]
      }

      # SIGTERM drains the member, up to drain_timeout (60s); Nomad sends SIGKILL after
      # kill_timeout, so it stays above the drain timeout (check the client's
      # max_kill_timeout, 30s by default, allows it).
      kill_signal  = "SIGTERM"
      kill_timeout = "90s"

      env {
        # The member id: the allocation's id (unique; a replaced allocation is a new member).
        COORDINATOR_INSTANCE_ID = "${NOMAD_ALLOC_ID}"
        # The Consul agent of the node the allocation runs on.
        COORDINATOR_ENDPOINTS = "http://${attr.unique.network.ip-address}:8500"
      }

      template {
        destination = "local/coordinator.toml"
        data        = <<-EOT
          backend = "consul"
          ttl = "5s"
          soak = "500ms"
          drain_timeout = "60s"
          handoff_timeout = "5m"
          token_file = "/secrets/consul-token"
          http_addr = "0.0.0.0:9100"
          log_format = "json"
        EOT
      }

      template {
        destination = "secrets/consul-token"
        perms       = "0400"
        data        = "{{ with nomadVar \"nomad/jobs/coordinator\" }}{{ .consul_token }}{{ end }}"
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
