# Stop the VM's part of the bridge on purpose (maintenance): supervisors stop restarting, processes
# are stopped, and the every-5-minutes task brings nothing back until every-boot.ps1 runs again.
. (Join-Path $PSScriptRoot 'common.ps1')
Initialize-BridgeFolders
Set-Content -Path $StopFile -Value (Get-Date -Format o)
foreach ($pidFile in Get-ChildItem -Path $StateDir -Filter '*.pid') {
    $id = (Get-Content -Path $pidFile.FullName -TotalCount 1).Trim()
    if ($id) {
        # /T: the whole tree (cmd and the python process under it).
        & taskkill.exe /PID $id /T /F 2>$null | Out-Null
    }
    Remove-Item -Path $pidFile.FullName -Force
}
Write-BridgeLog 'bridge processes stopped (stop file set)'
