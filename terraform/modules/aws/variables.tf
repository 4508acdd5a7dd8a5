################################################################################
# What rotator needs (the output of `rotator permissions --format json`)
################################################################################

variable "permissions" {
  description = "The decoded output of `rotator permissions --format json` (format rotator-permissions/v1), e.g. `jsondecode(file(\"permissions.json\"))`. The secrets it names are created here, and the task role is granted exactly the actions it lists, on exactly those secrets."
  type = object({
    format = string
    aws = object({
      secrets = list(object({
        policy     = string
        secret_id  = string
        region     = optional(string)
        create     = bool
        actions    = list(string)
        kms_key_id = optional(string)
      }))
      kms_actions = list(string)
    })
  })

  validation {
    condition     = var.permissions.format == "rotator-permissions/v1"
    error_message = "The permissions document must have format \"rotator-permissions/v1\" (the output of `rotator permissions --format json`)."
  }

  validation {
    condition = alltrue([
      for s in var.permissions.aws.secrets : length(s.actions) > 0 && alltrue([for a in s.actions : startswith(a, "secretsmanager:")])
    ])
    error_message = "Every secret in permissions.aws.secrets needs at least one action, and only Secrets Manager actions (secretsmanager:...)."
  }

  validation {
    condition     = alltrue([for a in var.permissions.aws.kms_actions : startswith(a, "kms:")])
    error_message = "permissions.aws.kms_actions may hold only KMS actions (kms:...)."
  }

  # A secret is its region and its secret_id: the same name may be a secret in two regions. (A
  # validation may read only its own variable before Terraform 1.9, so a secret without a region
  # counts as in "the default region" here; local.secrets, keyed by the region it resolves to,
  # fails on the rest.)
  validation {
    condition = length(distinct([
      for s in var.permissions.aws.secrets : startswith(s.secret_id, "arn:") ? s.secret_id : "${coalesce(s.region, "(default region)")}/${s.secret_id}"
    ])) == length(var.permissions.aws.secrets)
    error_message = "A secret (region and secret_id) appears twice in permissions.aws.secrets; rotator rejects two policies writing the same destination, so the document is not rotator's output."
  }
}

variable "name" {
  description = "Name of rotator's resources (roles, log group, task family, service, schedule) and prefix of their names."
  type        = string
  default     = "rotator"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,23}$", var.name))
    error_message = "The name must start with a letter and hold at most 24 letters, digits and hyphens (it prefixes IAM role and target group names, which have length limits)."
  }
}

variable "default_region" {
  description = "Region of the secrets whose policy names none. Null: the AWS provider's region."
  type        = string
  default     = null

  validation {
    condition     = var.default_region == null || can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.default_region))
    error_message = "The default region must be a region name such as eu-central-1."
  }
}

variable "tags" {
  description = "Tags for every resource the module creates."
  type        = map(string)
  default     = {}
}

################################################################################
# Secrets and the key
################################################################################

variable "create_secrets" {
  description = "Create the Secrets Manager secrets the permissions name (empty: rotator writes their first value). Secrets named by full ARN are never created; they exist elsewhere."
  type        = bool
  default     = true
}

variable "additional_kms_key_arns" {
  description = "More KMS keys (ARNs) rotator may use through Secrets Manager (`permissions.aws.kms_actions`), besides the module's key and the keys the policies name by ARN (`kms_key_id`): the keys of secrets created elsewhere, and of those whose policy names the key by key ID or alias (an IAM policy names a key by its ARN only)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.additional_kms_key_arns : can(regex("^arn:[^:]+:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", arn))])
    error_message = "Give KMS key ARNs (arn:<partition>:kms:<region>:<account>:key/<id>), not key IDs or aliases."
  }
}

variable "secret_replicas" {
  description = "Regions to replicate every created secret to. `kms_key_id` is a key in that region (a KMS key is regional); null uses that region's aws/secretsmanager key."
  type = list(object({
    region     = string
    kms_key_id = optional(string)
  }))
  default = []

  validation {
    condition     = length(distinct([for r in var.secret_replicas : r.region])) == length(var.secret_replicas)
    error_message = "Each replica region may appear once."
  }
}

variable "secret_recovery_window_in_days" {
  description = "Days a deleted secret can still be restored (0 deletes at once)."
  type        = number
  default     = 30

  validation {
    condition     = var.secret_recovery_window_in_days == 0 || (var.secret_recovery_window_in_days >= 7 && var.secret_recovery_window_in_days <= 30)
    error_message = "The recovery window is 0 or 7 to 30 days."
  }
}

variable "kms_deletion_window_in_days" {
  description = "Days between scheduling the KMS key's deletion and its deletion."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_in_days >= 7 && var.kms_deletion_window_in_days <= 30
    error_message = "The KMS deletion window is 7 to 30 days."
  }
}

variable "log_retention_in_days" {
  description = "Days CloudWatch keeps rotator's logs (the audit trail of every rotation)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_in_days)
    error_message = "The retention must be one of CloudWatch's values (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

################################################################################
# Runtime (ECS Fargate)
################################################################################

variable "runtime" {
  description = "How rotator runs: \"service\" (an ECS service running `rotator serve`, the scheduler and the HTTP API) or \"scheduled\" (an EventBridge Scheduler schedule running `rotator rotate --due` as an ECS task)."
  type        = string
  default     = "service"

  validation {
    condition     = contains(["service", "scheduled"], var.runtime)
    error_message = "The runtime is \"service\" or \"scheduled\"."
  }
}

variable "image" {
  description = "The rotator container image (built from deploy/Dockerfile, with the team's policy files in /etc/rotator/policies), preferably pinned by digest."
  type        = string

  validation {
    condition     = length(trimspace(var.image)) > 0 && !endswith(var.image, ":latest")
    error_message = "Give an image pinned by tag or digest, not :latest."
  }
}

variable "image_repository_arn" {
  description = "ARN of the private ECR repository holding the image, if it is one: the execution role may then pull from it (and only from it). Null for a public image."
  type        = string
  default     = null

  validation {
    condition     = var.image_repository_arn == null || can(regex("^arn:[^:]+:ecr:[a-z0-9-]+:[0-9]{12}:repository/.+$", var.image_repository_arn))
    error_message = "The repository must be an ECR repository ARN."
  }
}

variable "policies_dir" {
  description = "Where the image holds the policy files (deploy/Dockerfile copies them to /etc/rotator/policies)."
  type        = string
  default     = "/etc/rotator/policies"
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster that runs rotator's service or scheduled task."
  type        = string

  validation {
    condition     = can(regex("^arn:[^:]+:ecs:[a-z0-9-]+:[0-9]{12}:cluster/.+$", var.cluster_arn))
    error_message = "The cluster must be an ECS cluster ARN."
  }
}

variable "subnet_ids" {
  description = "Private subnets for rotator's tasks (no public IP is assigned: they reach Toktra, AWS and Vault through NAT or endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "Give at least one subnet (two or more, in different zones, for the service's two replicas)."
  }
}

variable "security_group_ids" {
  description = "Security groups of rotator's tasks: egress to Toktra, Secrets Manager, Vault and PostgreSQL; for the service, ingress on 8080 from the load balancer or the API's clients."
  type        = list(string)

  validation {
    condition     = length(var.security_group_ids) > 0
    error_message = "Give at least one security group."
  }
}

variable "cpu" {
  description = "Fargate CPU units of a task."
  type        = number
  default     = 256

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096], var.cpu)
    error_message = "CPU is one of 256, 512, 1024, 2048, 4096."
  }
}

variable "memory" {
  description = "Fargate memory of a task in MiB (a valid pairing with cpu)."
  type        = number
  default     = 512

  validation {
    condition     = var.memory >= 512 && var.memory <= 30720
    error_message = "Memory is 512 to 30720 MiB."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture the image was built for."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "The architecture is X86_64 or ARM64."
  }
}

variable "database_url_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the PostgreSQL DSN of the journal (postgres://...), injected as ROTATOR_DATABASE_URL. The database is not created here. PostgreSQL is required by both runtimes: replicas share leases through it, and a job's SQLite file would vanish with the task, forgetting pending revocations."
  type        = string

  validation {
    condition     = can(regex("^arn:[^:]+:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[^:]+$", var.database_url_secret_arn))
    error_message = "Give the full ARN of a Secrets Manager secret (no JSON key suffix)."
  }
}

variable "api_token_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the bearer token of rotator's HTTP API (at least 32 characters), injected as ROTATOR_API_TOKEN. Required by runtime \"service\"; the scheduled job serves no API and gets no token."
  type        = string
  default     = null

  validation {
    condition     = var.api_token_secret_arn == null || can(regex("^arn:[^:]+:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[^:]+$", var.api_token_secret_arn))
    error_message = "Give the full ARN of a Secrets Manager secret (no JSON key suffix)."
  }
}

variable "secrets" {
  description = "More environment variables injected from Secrets Manager, name => secret ARN: the Toktra management credential (TOKTRA_CLIENT_SECRET or TOKTRA_API_KEY) and, with token auth, VAULT_TOKEN. The execution role may read these, the two above, and nothing else."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for arn in values(var.secrets) : can(regex("^arn:[^:]+:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[^:]+$", arn))])
    error_message = "Every value must be the full ARN of a Secrets Manager secret (no JSON key suffix)."
  }

  validation {
    condition     = length(setintersection(keys(var.secrets), ["ROTATOR_DATABASE_URL", "ROTATOR_API_TOKEN"])) == 0
    error_message = "ROTATOR_DATABASE_URL and ROTATOR_API_TOKEN come from database_url_secret_arn and api_token_secret_arn."
  }
}

variable "runtime_secrets_kms_key_arns" {
  description = "Customer-managed KMS keys encrypting the runtime secrets above (database URL, API token, `secrets`), which the execution role may use through Secrets Manager. Empty when they use aws/secretsmanager."
  type        = list(string)
  default     = []
}

variable "environment" {
  description = "Plain environment variables of the container, e.g. TOKTRA_CLIENT_ID, VAULT_ADDR, ROTATOR_CONFIG. Never secrets: use `secrets`."
  type        = map(string)
  default     = {}

  validation {
    condition     = length(setintersection(keys(var.environment), ["ROTATOR_DATABASE_URL", "ROTATOR_API_TOKEN", "TOKTRA_CLIENT_SECRET", "TOKTRA_API_KEY", "VAULT_TOKEN"])) == 0
    error_message = "Secrets (ROTATOR_DATABASE_URL, ROTATOR_API_TOKEN, TOKTRA_CLIENT_SECRET, TOKTRA_API_KEY, VAULT_TOKEN) go through Secrets Manager, not plain environment variables."
  }
}

variable "desired_count" {
  description = "Replicas of `rotator serve` (runtime \"service\"). Two by default: with the PostgreSQL journal, per-policy leases keep one rotation in flight per policy, and a dead replica's work is taken over."
  type        = number
  default     = 2

  validation {
    condition     = var.desired_count >= 1
    error_message = "Run at least one replica."
  }
}

variable "load_balancer" {
  description = "Optional (runtime \"service\"): puts the API behind your Application Load Balancer: a target group in `vpc_id` and a rule on `listener_arn` (at `priority`, for requests matching `path_patterns`) forwarding to it; ECS registers the tasks there. Its health check is `/healthz` by default: ECS replaces tasks that fail the target group's health check, and `/readyz` fails while Toktra or Vault is unreachable, so with `/readyz` a vendor outage would cycle every task (see README)."
  type = object({
    vpc_id               = string
    listener_arn         = string
    priority             = optional(number, 100)
    path_patterns        = optional(list(string), ["/*"])
    protocol             = optional(string, "HTTP")
    health_check_path    = optional(string, "/healthz")
    deregistration_delay = optional(number, 30)
  })
  default = null

  validation {
    condition     = var.load_balancer == null || contains(["HTTP", "HTTPS"], try(var.load_balancer.protocol, "HTTP"))
    error_message = "The target group protocol is HTTP or HTTPS (HTTPS when rotator serves TLS itself, ROTATOR_TLS_CERT_FILE)."
  }

  validation {
    condition     = var.load_balancer == null || contains(["/readyz", "/healthz"], try(var.load_balancer.health_check_path, "/healthz"))
    error_message = "The health check path is /readyz or /healthz."
  }

  validation {
    condition     = var.load_balancer == null || can(regex("^arn:[^:]+:elasticloadbalancing:[a-z0-9-]+:[0-9]{12}:listener/app/.+$", try(var.load_balancer.listener_arn, "")))
    error_message = "load_balancer.listener_arn must be the ARN of an Application Load Balancer's listener (arn:...:elasticloadbalancing:...:listener/app/...)."
  }

  validation {
    condition     = var.load_balancer == null || try(var.load_balancer.priority >= 1 && var.load_balancer.priority <= 50000 && floor(var.load_balancer.priority) == var.load_balancer.priority, false)
    error_message = "load_balancer.priority is a whole number from 1 to 50000, unique among the listener's rules."
  }

  validation {
    condition     = var.load_balancer == null || try(length(var.load_balancer.path_patterns) >= 1 && length(var.load_balancer.path_patterns) <= 5 && alltrue([for p in var.load_balancer.path_patterns : length(p) > 0]), false)
    error_message = "load_balancer.path_patterns holds 1 to 5 non-empty path patterns (e.g. [\"/*\"], or [\"/v1/*\", \"/healthz\", \"/readyz\"] on a shared listener)."
  }
}

variable "schedule_expression" {
  description = "When the scheduled runtime runs `rotator rotate --due` (EventBridge Scheduler: rate(...), cron(...))."
  type        = string
  default     = "rate(15 minutes)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.schedule_expression))
    error_message = "The schedule is a rate(...) or cron(...) expression."
  }
}

variable "schedule_timezone" {
  description = "Time zone of a cron(...) schedule expression."
  type        = string
  default     = "UTC"
}
