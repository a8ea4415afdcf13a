# The control plane's store on a managed PostgreSQL (RDS), for running two or more control-plane
# machines (forge server + forge controllers on each, one leader among the controllers).
# Off by default: a single control-plane machine keeps SQLite in /var/lib/forge.

resource "aws_subnet" "database_b" {
  count             = var.managed_database ? 1 : 0
  vpc_id            = aws_vpc.main.id
  cidr_block        = var.database_subnet_b_cidr
  availability_zone = data.aws_availability_zones.available.names[1]
  tags              = { Name = "${var.name}-database-b" }
}

data "aws_availability_zones" "available" {
  state = "available"
}

resource "aws_db_subnet_group" "forge" {
  count      = var.managed_database ? 1 : 0
  name       = "${var.name}-store"
  subnet_ids = [aws_subnet.private.id, aws_subnet.database_b[0].id]
}

resource "aws_security_group" "database" {
  count  = var.managed_database ? 1 : 0
  name   = "${var.name}-store"
  vpc_id = aws_vpc.main.id
  ingress {
    description     = "PostgreSQL from the control plane only"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.control_plane.id]
  }
}

resource "aws_db_instance" "forge" {
  count                       = var.managed_database ? 1 : 0
  identifier                  = "${var.name}-store"
  engine                      = "postgres"
  engine_version              = "15"
  instance_class              = var.database_instance_class
  allocated_storage           = 20
  storage_encrypted           = true
  multi_az                    = true
  db_name                     = "forge"
  username                    = "forge"
  manage_master_user_password = true # the password lives in Secrets Manager, never in state
  db_subnet_group_name        = aws_db_subnet_group.forge[0].name
  vpc_security_group_ids      = [aws_security_group.database[0].id]
  backup_retention_period     = 7
  deletion_protection         = true
  skip_final_snapshot         = false
  final_snapshot_identifier   = "${var.name}-store-final"
}
