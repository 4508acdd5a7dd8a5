output "kms_key_arn" {
  description = "ARN of the KMS key encrypting the secrets and the logs."
  value       = aws_kms_key.this.arn
}

output "kms_key_id" {
  description = "ID of the KMS key encrypting the secrets and the logs."
  value       = aws_kms_key.this.key_id
}

output "secret_arns" {
  description = "ARNs of the secrets this module created, by `<region>/<secret_id>`."
  value       = { for key, secret in aws_secretsmanager_secret.this : key => secret.arn }
}

output "granted_secret_arns" {
  description = "The secret ARNs the task role may use, by `<region>/<secret_id>`: a full ARN as given; for a name, the pattern `<name>-??????` and, when rotator may create the secret, `<name>` (what AWS checks while the secret does not exist)."
  value       = { for key, secret in local.secrets : key => secret.arns }
}

output "task_role_arn" {
  description = "ARN of rotator's role (the ECS task role); bind Vault's AWS auth role to it."
  value       = aws_iam_role.task.arn
}

output "task_role_name" {
  description = "Name of rotator's role (the ECS task role)."
  value       = aws_iam_role.task.name
}

output "task_role_policy_json" {
  description = "The task role's policy document, for review."
  value       = data.aws_iam_policy_document.task.json
}

output "execution_role_arn" {
  description = "ARN of the ECS execution role."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "Name of rotator's CloudWatch log group."
  value       = aws_cloudwatch_log_group.this.name
}

output "log_group_arn" {
  description = "ARN of rotator's CloudWatch log group."
  value       = aws_cloudwatch_log_group.this.arn
}

output "service_task_definition_arn" {
  description = "ARN (with revision) of the task definition running `rotator serve`."
  value       = aws_ecs_task_definition.service.arn
}

output "job_task_definition_arn" {
  description = "ARN (with revision) of the task definition running `rotator rotate --due` (what the schedule runs; also runnable by hand)."
  value       = aws_ecs_task_definition.job.arn
}

output "service_name" {
  description = "Name of the ECS service running `rotator serve` (runtime \"service\"), else null."
  value       = try(aws_ecs_service.this[0].name, null)
}

output "target_group_arn" {
  description = "ARN of the API's target group (when load_balancer is set), else null."
  value       = try(aws_lb_target_group.this[0].arn, null)
}

output "listener_rule_arn" {
  description = "ARN of the listener rule forwarding to the API's target group (when load_balancer is set), else null."
  value       = try(aws_lb_listener_rule.this[0].arn, null)
}

output "schedule_arn" {
  description = "ARN of the EventBridge Scheduler schedule running `rotator rotate --due` (runtime \"scheduled\"), else null."
  value       = try(aws_scheduler_schedule.this[0].arn, null)
}

output "scheduler_role_arn" {
  description = "ARN of the role EventBridge Scheduler starts the task with (runtime \"scheduled\"), else null."
  value       = try(aws_iam_role.scheduler[0].arn, null)
}
