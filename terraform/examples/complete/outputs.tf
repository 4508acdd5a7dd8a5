output "task_role_arn" {
  description = "rotator's IAM role."
  value       = module.rotator_aws.task_role_arn
}

output "task_role_policy_json" {
  description = "What rotator may do in AWS, for review."
  value       = module.rotator_aws.task_role_policy_json
}

output "secret_arns" {
  description = "The secrets created for the example policies."
  value       = module.rotator_aws.secret_arns
}

output "kms_key_arn" {
  description = "The key of the secrets and the logs."
  value       = module.rotator_aws.kms_key_arn
}

output "target_group_arn" {
  description = "The API's target group (when vpc_id and listener_arn are set)."
  value       = module.rotator_aws.target_group_arn
}

output "vault_policy_name" {
  description = "rotator's Vault policy."
  value       = module.rotator_vault.policy_name
}
