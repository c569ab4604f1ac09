/**
 * The public API: load a build file, build it, report on it. Everything else
 * under src/ is internal and may change without notice.
 */
export { loadBuildFile, parseBuildFile } from './config/load.js';
export type { BuildSpec, ImageSpec, StepSpec, CopyStep, Platform } from './config/types.js';
export { runBuild, type BuildOptions, type BuildResult } from './build/run-build.js';
export type { BuildEvent, StepResult, StepStatus } from './build/events.js';
export type { BuiltImage } from './build/assemble.js';
export { jsonReport, markdownReport, textReport, summarize, type BuildSummary } from './report/summary.js';
export { junitReport } from './report/junit.js';
export { planBuild, type BuildPlan, type PlannedStep, type PlanOptions, type PlanStatus } from './build/plan-build.js';
export { planReport, type PlanFormat } from './report/plan-report.js';
export {
  LayergraphError,
  ConfigError,
  PathEscapeError,
  StepError,
  CacheCorruptError,
  DiskFullError,
  UsageError,
  formatIssue,
  type ConfigIssue,
  type ErrorCode,
  type SourcePos,
} from './errors.js';
