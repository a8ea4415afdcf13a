resource "aws_instance" "control_plane" {
  count                  = var.control_plane_count
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
  tags = { Name = "${var.name}-control-plane-${count.index}", Role = "control_plane" }

  lifecycle {
    precondition {
      condition     = var.control_plane_count == 1 || var.managed_database
      error_message = "More than one control-plane machine needs managed_database = true (a shared PostgreSQL store)."
    }
  }
}

resource "aws_eip" "control_plane" {
  count    = var.control_plane_count
  instance = aws_instance.control_plane[count.index].id
  domain   = "vpc"
  tags     = { Name = "${var.name}-control-plane-${count.index}" }
}

resource "aws_instance" "worker" {
  count                  = var.worker_count
  ami                    = var.ami_id
  instance_type          = var.worker_instance_type
  subnet_id              = aws_subnet.private.id
  vpc_security_group_ids = [aws_security_group.worker.id]
  # The worker forwards its instance subnet (Instances in their own network namespaces).
  source_dest_check = false
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
