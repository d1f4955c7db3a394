// The umbrella: `import Finch` brings in the public API of every layer, bottom up.
// (Each layer is its own module; code inside Finch imports the ones it needs.)
@_exported import FinchKernels
@_exported import FinchIO
@_exported import FinchTokenizers
@_exported import FinchModels
@_exported import FinchGeneration
@_exported import FinchDistributed
@_exported import FinchTraining
@_exported import FinchExport
