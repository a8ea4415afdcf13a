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

output "store_endpoint" {
  value       = var.managed_database ? aws_db_instance.forge[0].endpoint : null
  description = "FORGE_STORE_URL=postgresql://forge@ENDPOINT/forge (the password is in Secrets Manager)."
}
