resource "aws_instance" "control_plane" {
  ami                    = var.ami_id
  instance_type          = var.control_plane_instance_type
  subnet_id              = aws_subnet.public.id
  vpc_security_group_ids = [aws_security_group.control_plane.id]
  key_name               = var.ssh_key_name
  metadata_options {
    http_tokens = "required"
  }
  root_block_device {
    volume_size = 30
    encrypted   = true
  }
  tags = { Name = "${var.name}-control-plane", Role = "control_plane" }
}

resource "aws_eip" "control_plane" {
  instance = aws_instance.control_plane.id
  domain   = "vpc"
  tags     = { Name = "${var.name}-control-plane" }
}

resource "aws_instance" "worker" {
  count                  = var.worker_count
  ami                    = var.ami_id
  instance_type          = var.worker_instance_type
  subnet_id              = aws_subnet.private.id
  vpc_security_group_ids = [aws_security_group.worker.id]
  key_name               = var.ssh_key_name
  metadata_options {
    http_tokens = "required"
  }
  root_block_device {
    volume_size = 50
    encrypted   = true
  }
  tags = { Name = "${var.name}-worker-${count.index}", Role = "worker" }
}
