variable "region" {
  type        = string
  default     = "eu-central-1"
  description = "AWS region."
}

variable "name" {
  type        = string
  default     = "forge"
  description = "Prefix of every resource name."
}

variable "vpc_cidr" {
  type    = string
  default = "10.0.0.0/16"
}

variable "public_subnet_cidr" {
  type    = string
  default = "10.0.1.0/24"
}

variable "private_subnet_cidr" {
  type    = string
  default = "10.0.2.0/24"
}

variable "enable_nat_gateway" {
  type        = bool
  default     = true
  description = "Give the private workers outbound internet (git fetch, package installs) through a NAT gateway."
}

variable "ami_id" {
  type        = string
  description = "Debian 12 AMI for every instance."
}

variable "control_plane_instance_type" {
  type    = string
  default = "t3.small"
}

variable "worker_instance_type" {
  type    = string
  default = "t3.medium"
}

variable "worker_count" {
  type    = number
  default = 2
}

variable "ssh_key_name" {
  type    = string
  default = null
}

variable "admin_cidr" {
  type        = string
  default     = null
  description = "CIDR allowed to SSH to the control plane; null disables SSH from outside."
}

variable "control_plane_count" {
  type        = number
  default     = 1
  description = "Control-plane machines. More than one needs managed_database (a shared PostgreSQL store)."
}

variable "managed_database" {
  type        = bool
  default     = false
  description = "Keep the store in RDS PostgreSQL (Multi-AZ) instead of SQLite on the control-plane machine."
}

variable "database_instance_class" {
  type    = string
  default = "db.t4g.small"
}

variable "database_subnet_b_cidr" {
  type        = string
  default     = "10.0.3.0/24"
  description = "A second private subnet (RDS needs two availability zones)."
}

variable "instance_subnet_pool" {
  type        = string
  default     = "10.213.0.0/16"
  description = "Worker i's Instances get cidrsubnet(pool, 8, i + 1) (a /24); must not overlap the VPC."
}
