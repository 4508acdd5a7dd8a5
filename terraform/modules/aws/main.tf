data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  # The region is data.aws_region's `id`, its name in provider v5 and v6 alike: v6 deprecates
  # `name` (and, from 6.47, `id` too, a warning only), and `region`, which replaces both, does not
  # exist in v5. Switch to `region` when the module drops v5. Service endpoints end in the
  # partition's DNS suffix (amazonaws.com, amazonaws.com.cn, c2s.ic.gov, ...).
  partition      = data.aws_partition.current.partition
  dns_suffix     = data.aws_partition.current.dns_suffix
  account_id     = data.aws_caller_identity.current.account_id
  region         = data.aws_region.current.id
  default_region = coalesce(var.default_region, local.region)

  service       = var.runtime == "service"
  scheduled     = var.runtime == "scheduled"
  load_balanced = local.service && var.load_balancer != null

  # One entry per secret the policies name, keyed by "<region>/<secret_id>": the same name may be
  # a secret in two regions, and rotator rejects two policies writing the same destination, so the
  # keys are unique. `arns` are what the task role is granted for it: a full ARN as it is; a name
  # as `<name>-??????` (Secrets Manager appends six random characters to the name in the ARN),
  # and, when rotator may create the secret, as `<name>` too: while a secret does not exist, AWS
  # evaluates DescribeSecret and CreateSecret against the ARN without the suffix.
  secrets = {
    for s in [
      for raw in var.permissions.aws.secrets : {
        policy     = raw.policy
        secret_id  = raw.secret_id
        create     = raw.create
        actions    = raw.actions
        kms_key_id = raw.kms_key_id
        by_arn     = startswith(raw.secret_id, "arn:")
        region     = startswith(raw.secret_id, "arn:") ? split(":", raw.secret_id)[3] : coalesce(raw.region, local.default_region)
        name_arn   = "arn:${local.partition}:secretsmanager:${coalesce(raw.region, local.default_region)}:${local.account_id}:secret:${raw.secret_id}"
      }
      ] : "${s.region}/${s.secret_id}" => {
      policy     = s.policy
      secret_id  = s.secret_id
      actions    = s.actions
      kms_key_id = s.kms_key_id
      by_arn     = s.by_arn
      region     = s.region
      arns       = s.by_arn ? [s.secret_id] : s.create ? ["${s.name_arn}-??????", s.name_arn] : ["${s.name_arn}-??????"]
    }
  }
  created_secrets = { for key, s in local.secrets : key => s if var.create_secrets && !s.by_arn }
  secret_regions  = sort(distinct([for s in local.secrets : s.region]))

  # Known before the log group exists, so the key policy can name it without a cycle.
  log_group_name = "/ecs/${var.name}"
  log_group_arn  = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_name}"

  # What ECS injects from Secrets Manager. Only `serve` has an API, so only it gets the token.
  job_secrets            = merge(var.secrets, { ROTATOR_DATABASE_URL = var.database_url_secret_arn })
  service_secrets        = merge(local.job_secrets, var.api_token_secret_arn == null ? {} : { ROTATOR_API_TOKEN = var.api_token_secret_arn })
  runtime_secret_regions = sort(distinct([for arn in values(local.service_secrets) : split(":", arn)[3]]))

  container_name = "rotator"
  container_port = 8080

  tags = merge(var.tags, { "managed-by" = "rotator" })
}

################################################################################
# KMS key of the secrets and the logs
################################################################################

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" is this key only; the account statement is AWS's default key policy, without which the key becomes unmanageable
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" is this key only; the account statement is AWS's default key policy, without which the key becomes unmanageable
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" is this key only; it cannot name the key's own ARN before the key exists

  # AWS's default key policy: the account administers the key, and IAM policies (the task role's
  # below) grant its use. Without it the key would be unmanageable.
  statement {
    sid       = "AccountAdministersKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs' regional principal ends in the partition's DNS suffix (in China
  # logs.<region>.amazonaws.com.cn), unlike the ECS tasks and Scheduler principals below, which are
  # <service>.amazonaws.com in every partition.
  statement {
    sid       = "CloudWatchLogsEncryptsRotatorLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.${local.dns_suffix}"]
    }

    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = [local.log_group_arn]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: Toktra credentials in Secrets Manager and rotator's logs"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_in_days
  policy                  = data.aws_iam_policy_document.key.json

  tags = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

################################################################################
# The secrets the policies name (created empty: rotator writes every value)
################################################################################

resource "aws_secretsmanager_secret" "this" {
  for_each = local.created_secrets

  #checkov:skip=CKV2_AWS_57:Secrets Manager's automatic rotation does not apply: rotator rotates these secrets (mint at Toktra, stage AWSPENDING, verify, promote AWSCURRENT)

  name        = each.value.secret_id
  description = "Toktra credential of rotation policy ${each.value.policy}; written only by rotator"
  # The key the policy names (kms_key_id), else the module's.
  kms_key_id              = coalesce(each.value.kms_key_id, aws_kms_key.this.arn)
  recovery_window_in_days = var.secret_recovery_window_in_days

  dynamic "replica" {
    for_each = var.secret_replicas

    content {
      region     = replica.value.region
      kms_key_id = replica.value.kms_key_id
    }
  }

  tags = merge(local.tags, { "rotator-policy" = each.value.policy })

  lifecycle {
    precondition {
      condition     = each.value.region == local.region
      error_message = "Secret ${each.value.secret_id} (policy ${each.value.policy}) is in ${each.value.region}, but this module instance creates secrets in ${local.region} with a key of that region. Use one module instance per region, or name the secret by full ARN and create it elsewhere."
    }
  }
}

################################################################################
# Logs
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_in_days
  kms_key_id        = aws_kms_key.this.arn

  tags = local.tags
}

################################################################################
# IAM: the task role (what rotator may do) and the execution role (what ECS does to start it)
################################################################################

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

# rotator's own grants, exactly what `rotator permissions` derived from the policy files: the
# Secrets Manager actions come from the document only (no action is written here), each on the
# one secret it is for, and the KMS actions only through Secrets Manager.
data "aws_iam_policy_document" "task" {
  dynamic "statement" {
    for_each = local.secrets

    content {
      actions   = statement.value.actions
      resources = statement.value.arns
    }
  }

  # The secrets' keys: the module's, every key a policy names by ARN (kms_key_id), and
  # additional_kms_key_arns (the keys of secrets created elsewhere, or named by key ID or alias).
  # Only with a secret: a kms:ViaService condition without a value is invalid.
  dynamic "statement" {
    for_each = length(local.secrets) > 0 ? [1] : []

    content {
      sid     = "UseSecretsKeysThroughSecretsManager"
      actions = var.permissions.aws.kms_actions
      resources = distinct(concat(
        [aws_kms_key.this.arn],
        [for s in local.secrets : s.kms_key_id if s.kms_key_id == null ? false : startswith(s.kms_key_id, "arn:")],
        var.additional_kms_key_arns,
      ))

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [for region in local.secret_regions : "secretsmanager.${region}.${local.dns_suffix}"]
      }
    }
  }
}

resource "aws_iam_role" "task" {
  name                  = "${var.name}-task"
  description           = "rotator: rotates the Toktra credentials its policies name"
  assume_role_policy    = data.aws_iam_policy_document.ecs_tasks_assume.json
  force_detach_policies = true

  tags = local.tags
}

resource "aws_iam_role_policy" "task" {
  name   = "rotator-permissions"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json

  lifecycle {
    # As `rotator permissions --format aws-iam` without --kms-key-arn: an IAM policy names a key
    # by its ARN only.
    precondition {
      condition     = length(var.additional_kms_key_arns) > 0 || alltrue([for s in local.secrets : s.kms_key_id == null ? true : startswith(s.kms_key_id, "arn:")])
      error_message = "A policy names a secret's KMS key by key ID or alias (${join(", ", [for s in local.secrets : "${s.policy}: ${s.kms_key_id}" if s.kms_key_id == null ? false : !startswith(s.kms_key_id, "arn:")])}); give that key's ARN in additional_kms_key_arns, or name it by ARN in the policy."
    }
  }
}

# The execution role reads only the runtime secrets it injects and writes only rotator's log
# group (and, for a private ECR image, pulls only that repository).
data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "ReadRuntimeSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = sort(distinct(values(local.service_secrets)))
  }

  dynamic "statement" {
    for_each = length(var.runtime_secrets_kms_key_arns) > 0 ? [1] : []

    content {
      sid       = "DecryptRuntimeSecrets"
      actions   = ["kms:Decrypt"]
      resources = var.runtime_secrets_kms_key_arns

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [for region in local.runtime_secret_regions : "secretsmanager.${region}.${local.dns_suffix}"]
      }
    }
  }

  statement {
    sid       = "WriteRotatorLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:log-stream:*"]
  }

  dynamic "statement" {
    for_each = var.image_repository_arn == null ? [] : [1]

    content {
      sid       = "PullRotatorImage"
      actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
      resources = [var.image_repository_arn]
    }
  }

  dynamic "statement" {
    for_each = var.image_repository_arn == null ? [] : [1]

    content {
      # GetAuthorizationToken has no resource to scope to.
      sid       = "LogInToEcr"
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name                  = "${var.name}-execution"
  description           = "ECS starts rotator: injects its runtime secrets and writes its logs"
  assume_role_policy    = data.aws_iam_policy_document.ecs_tasks_assume.json
  force_detach_policies = true

  tags = local.tags
}

resource "aws_iam_role_policy" "execution" {
  name   = "rotator-execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

################################################################################
# Runtime: an ECS service running `rotator serve`, or a schedule running `rotator rotate --due`.
# Both task definitions exist whatever the runtime (they cost nothing and run nothing by
# themselves; the job's can also be run by hand), so neither needs a conditional: their
# containers differ in their keys (the job has no port and no health check), and null keys would
# make ECS report a difference at every plan.
################################################################################

# Parts of the containers. The containers themselves are written out in each task definition,
# where checkov reads them (it cannot follow a for expression inside one).
locals {
  job_environment     = [for name, value in merge({ ROTATOR_LOG_FORMAT = "json" }, var.environment) : { name = name, value = value }]
  service_environment = [for name, value in merge({ ROTATOR_LOG_FORMAT = "json", ROTATOR_LISTEN = "0.0.0.0:${local.container_port}" }, var.environment) : { name = name, value = value }]

  job_container_secrets     = [for name, arn in local.job_secrets : { name = name, valueFrom = arn }]
  service_container_secrets = [for name, arn in local.service_secrets : { name = name, valueFrom = arn }]

  container_logs = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = aws_cloudwatch_log_group.this.name
      awslogs-region        = local.region
      awslogs-stream-prefix = var.name
    }
  }
}

resource "aws_ecs_task_definition" "service" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  task_role_arn            = aws_iam_role.task.arn
  execution_role_arn       = aws_iam_role.execution.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # The root filesystem is read-only; /tmp is the task's ephemeral storage.
  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name      = local.container_name
    image     = var.image
    essential = true
    command   = ["serve", "--policies", var.policies_dir]
    # The policy files are in the image (deploy/Dockerfile) and PostgreSQL holds all state.
    readonlyRootFilesystem = true
    privileged             = false
    # SIGTERM lets a step in flight finish (rotator's shutdown_timeout, 60s by default); 120s is
    # the most Fargate allows. The numbers here are literals, not variables: checkov 3.3.30 stops
    # reading a container definition that holds a numeric variable (and would then pass it unread).
    stopTimeout      = 120
    environment      = local.service_environment
    secrets          = local.service_container_secrets
    portMappings     = [{ name = "http", containerPort = 8080, protocol = "tcp" }] # local.container_port
    mountPoints      = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    linuxParameters  = { initProcessEnabled = true, capabilities = { drop = ["ALL"] } }
    logConfiguration = local.container_logs
    # Liveness only: `rotator healthcheck` asks the local /healthz, which answers while the
    # process serves. Readiness (/readyz: journal, Vault, Toktra) is never what ECS acts on, so a
    # vendor outage never makes ECS kill every replica (see the target group below).
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/rotator", "healthcheck"]
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
  }])

  tags = local.tags
}

resource "aws_ecs_task_definition" "job" {
  family                   = "${var.name}-rotate-due"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  task_role_arn            = aws_iam_role.task.arn
  execution_role_arn       = aws_iam_role.execution.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = local.container_name
    image                  = var.image
    essential              = true
    command                = ["rotate", "--due", "--policies", var.policies_dir]
    readonlyRootFilesystem = true
    privileged             = false
    stopTimeout            = 120
    environment            = local.job_environment
    secrets                = local.job_container_secrets
    mountPoints            = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    linuxParameters        = { initProcessEnabled = true, capabilities = { drop = ["ALL"] } }
    logConfiguration       = local.container_logs
  }])

  tags = local.tags
}

resource "aws_lb_target_group" "this" {
  count = local.load_balanced ? 1 : 0

  # HTTP inside the VPC by default: rotator serves TLS only from certificate files
  # (ROTATOR_TLS_CERT_FILE); set load_balancer.protocol = "HTTPS" when the image carries them.
  name                 = "${var.name}-api"
  port                 = local.container_port
  protocol             = var.load_balancer.protocol
  target_type          = "ip"
  vpc_id               = var.load_balancer.vpc_id
  deregistration_delay = var.load_balancer.deregistration_delay

  health_check {
    enabled             = true
    path                = var.load_balancer.health_check_path
    protocol            = var.load_balancer.protocol
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = local.tags
}

# ECS rejects a service whose target group no load balancer forwards to, so the rule exists before
# the service (its depends_on).
resource "aws_lb_listener_rule" "this" {
  count = local.load_balanced ? 1 : 0

  listener_arn = var.load_balancer.listener_arn
  priority     = var.load_balancer.priority

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this[0].arn
  }

  condition {
    path_pattern {
      values = var.load_balancer.path_patterns
    }
  }

  tags = local.tags
}

resource "aws_ecs_service" "this" {
  count = local.service ? 1 : 0

  name                               = var.name
  cluster                            = var.cluster_arn
  task_definition                    = aws_ecs_task_definition.service.arn
  desired_count                      = var.desired_count
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  enable_execute_command             = false
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = var.load_balancer == null ? null : 60
  propagate_tags                     = "SERVICE"

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = false
  }

  dynamic "load_balancer" {
    for_each = aws_lb_target_group.this

    content {
      target_group_arn = load_balancer.value.arn
      container_name   = local.container_name
      container_port   = local.container_port
    }
  }

  tags = local.tags

  # The roles' policies are not referenced, only the roles: without these, the first tasks could
  # start before what they may do exists (and fail to read their secrets or to rotate).
  depends_on = [aws_iam_role_policy.execution, aws_iam_role_policy.task, aws_lb_listener_rule.this]

  lifecycle {
    precondition {
      condition     = var.api_token_secret_arn != null
      error_message = "runtime \"service\" needs api_token_secret_arn: rotator serve refuses to serve its API on a non-loopback address without a token."
    }
  }
}

################################################################################
# Scheduled runtime: EventBridge Scheduler runs `rotator rotate --due` as an ECS task. A job needs
# the PostgreSQL journal too: a SQLite file would vanish with the task and forget the pending
# revocations (grace periods outlive a run), and overlapping runs rely on its per-policy leases.
################################################################################

# Confused-deputy protection: Scheduler may assume the role for this account's schedules only.
# (aws:SourceArn on the schedule would be a cycle: the schedule names this role.)
data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "RunRotatorTask"
    actions   = ["ecs:RunTask"]
    resources = ["${aws_ecs_task_definition.job.arn_without_revision}:*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.cluster_arn]
    }
  }

  statement {
    sid       = "PassRotatorRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.task.arn, aws_iam_role.execution.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  count = local.scheduled ? 1 : 0

  name                  = "${var.name}-scheduler"
  description           = "EventBridge Scheduler starts rotator's scheduled task"
  assume_role_policy    = data.aws_iam_policy_document.scheduler_assume.json
  force_detach_policies = true

  tags = local.tags
}

resource "aws_iam_role_policy" "scheduler" {
  count = local.scheduled ? 1 : 0

  name   = "run-rotator"
  role   = aws_iam_role.scheduler[0].id
  policy = data.aws_iam_policy_document.scheduler.json
}

resource "aws_scheduler_schedule" "this" {
  count = local.scheduled ? 1 : 0

  #checkov:skip=CKV_AWS_297:The schedule carries no payload (the task definition holds the command), so a customer-managed key would protect nothing; the secrets and logs use the module's key

  name                         = var.name
  description                  = "rotator rotate --due"
  schedule_expression          = var.schedule_expression
  schedule_expression_timezone = var.schedule_timezone

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = var.cluster_arn
    role_arn = aws_iam_role.scheduler[0].arn

    ecs_parameters {
      task_definition_arn = aws_ecs_task_definition.job.arn
      launch_type         = "FARGATE"
      platform_version    = "LATEST"
      task_count          = 1

      network_configuration {
        subnets          = var.subnet_ids
        security_groups  = var.security_group_ids
        assign_public_ip = false
      }
    }

    # A run that cannot start is retried briefly; the next run picks up whatever is still due.
    retry_policy {
      maximum_event_age_in_seconds = 600
      maximum_retry_attempts       = 2
    }
  }

  # As the service's: no run before the roles may do what it needs (the schedule references the
  # roles, not their policies).
  depends_on = [aws_iam_role_policy.execution, aws_iam_role_policy.task, aws_iam_role_policy.scheduler]
}
