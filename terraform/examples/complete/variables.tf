variable "region" {
  description = "AWS region of the example (the example policies name eu-central-1)."
  type        = string
  default     = "eu-central-1"
}

variable "vault_address" {
  description = "Address of the Vault server."
  type        = string
  default     = "https://vault.example.internal:8200"

  validation {
    condition     = startswith(var.vault_address, "https://")
    error_message = "Reach Vault over HTTPS."
  }
}

variable "runtime" {
  description = "\"service\" (rotator serve) or \"scheduled\" (rotator rotate --due on a schedule)."
  type        = string
  default     = "service"
}

variable "image" {
  description = "The rotator image built from deploy/Dockerfile, pinned by digest."
  type        = string
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the tasks."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the tasks."
  type        = list(string)
}

variable "vpc_id" {
  description = "VPC of the API's target group; null (or listener_arn null): no load balancing."
  type        = string
  default     = null
}

variable "listener_arn" {
  description = "ALB listener that forwards to the API's target group (every path, rule priority 100); null (or vpc_id null): no load balancing."
  type        = string
  default     = null
}

variable "database_url_secret_arn" {
  description = "Secret holding the PostgreSQL DSN of the journal."
  type        = string
}

variable "api_token_secret_arn" {
  description = "Secret holding the HTTP API's bearer token."
  type        = string
}

variable "toktra_client_id" {
  description = "Client ID of rotator's Toktra management credential."
  type        = string
}

variable "toktra_client_secret_arn" {
  description = "Secret holding the client secret of rotator's Toktra management credential."
  type        = string
}
