output "control_plane_public_ip" {
  value       = aws_eip.control_plane.public_ip
  description = "Point *.DOMAIN (A record) here."
}

output "control_plane_private_ip" {
  value = aws_instance.control_plane.private_ip
}

output "worker_private_ips" {
  value = aws_instance.worker[*].private_ip
}
