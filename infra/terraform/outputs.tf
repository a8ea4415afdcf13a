output "control_plane_public_ips" {
  value       = aws_eip.control_plane[*].public_ip
  description = "Point *.DOMAIN (A records, or a load balancer in front of them) here."
}

output "control_plane_private_ips" {
  value = aws_instance.control_plane[*].private_ip
}

output "worker_private_ips" {
  value = aws_instance.worker[*].private_ip
}

output "worker_instance_subnets" {
  value       = [for i, w in aws_instance.worker : cidrsubnet(var.instance_subnet_pool, 8, i + 1)]
  description = "instance_subnet= of each worker in the Ansible inventory (the VPC routes them to it)."
}

output "store_endpoint" {
  value       = var.managed_database ? aws_db_instance.forge[0].endpoint : null
  description = "FORGE_STORE_URL=postgresql://forge@ENDPOINT/forge (the password is in Secrets Manager)."
}
