# Control plane: Caddy serves apps on 80/443 to the world; the Forge API (8080) is reachable
# only from inside the VPC (agents, operators on a VPN/bastion).
resource "aws_security_group" "control_plane" {
  name        = "${var.name}-control-plane"
  description = "Forge control plane: Caddy public, API inside the VPC"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${var.name}-control-plane" }
}

resource "aws_vpc_security_group_ingress_rule" "cp_http" {
  security_group_id = aws_security_group.control_plane.id
  description       = "HTTP (Caddy; ACME HTTP-01 and redirects)"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "cp_https" {
  security_group_id = aws_security_group.control_plane.id
  description       = "HTTPS (Caddy)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "cp_api" {
  security_group_id = aws_security_group.control_plane.id
  description       = "Forge API from inside the VPC"
  ip_protocol       = "tcp"
  from_port         = 8080
  to_port           = 8080
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_ingress_rule" "cp_ssh" {
  count             = var.admin_cidr == null ? 0 : 1
  security_group_id = aws_security_group.control_plane.id
  description       = "SSH from the operators' network"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = var.admin_cidr
}

resource "aws_vpc_security_group_egress_rule" "cp_all" {
  security_group_id = aws_security_group.control_plane.id
  description       = "All outbound"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

# Workers: app ports (20000-39999) and agent metrics (9108) only from the control plane.
resource "aws_security_group" "worker" {
  name        = "${var.name}-worker"
  description = "Forge workers: app ports and metrics from the control plane only"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${var.name}-worker" }
}

resource "aws_vpc_security_group_ingress_rule" "worker_apps" {
  security_group_id            = aws_security_group.worker.id
  description                  = "App ports, dialed by Caddy on the control plane"
  ip_protocol                  = "tcp"
  from_port                    = 20000
  to_port                      = 39999
  referenced_security_group_id = aws_security_group.control_plane.id
}

resource "aws_vpc_security_group_ingress_rule" "worker_metrics" {
  security_group_id            = aws_security_group.worker.id
  description                  = "Agent metrics, scraped by Prometheus on the control plane"
  ip_protocol                  = "tcp"
  from_port                    = 9108
  to_port                      = 9108
  referenced_security_group_id = aws_security_group.control_plane.id
}

resource "aws_vpc_security_group_ingress_rule" "worker_ssh" {
  security_group_id            = aws_security_group.worker.id
  description                  = "SSH through the control plane as a bastion"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  referenced_security_group_id = aws_security_group.control_plane.id
}

resource "aws_vpc_security_group_egress_rule" "worker_all" {
  security_group_id = aws_security_group.worker.id
  description       = "All outbound (through the NAT gateway when enabled)"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}
