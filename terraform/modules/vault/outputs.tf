output "policy_name" {
  description = "Name of rotator's Vault policy."
  value       = vault_policy.this.name
}

output "aws_auth_role" {
  description = "Role name on the AWS auth method (rotator.toml: [vault.aws] role), or null."
  value       = try(vault_aws_auth_backend_role.this[0].role, null)
}

output "kubernetes_auth_role" {
  description = "Role name on the Kubernetes auth method (rotator.toml: [vault.kubernetes] role), or null."
  value       = try(vault_kubernetes_auth_backend_role.this[0].role_name, null)
}

output "jwt_auth_role" {
  description = "Role name on the JWT auth method (rotator.toml: [vault.jwt] role), or null."
  value       = try(vault_jwt_auth_backend_role.this[0].role_name, null)
}

output "approle_role_id" {
  description = "RoleID of rotator's AppRole (rotator.toml: [vault.approle] role_id), or null. Its secret IDs are issued outside Terraform so they never enter the state."
  value       = try(vault_approle_auth_backend_role.this[0].role_id, null)
}
